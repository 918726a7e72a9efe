"""Run a command under the sandbox a systemd unit file describes, without systemd (which this
project's machines do not run as PID 1, and which must not be booted there).

Everything applied is read from the unit file itself, so editing the unit changes what the
tests apply (tests/test_unit_sandbox.py):

- seccomp, through libseccomp (ctypes), with the semantics of systemd 252 (src/core/
  load-fragment.c config_parse_syscall_filter, src/core/execute.c apply_syscall_filter,
  src/shared/seccomp-util.c): SystemCallFilter= lines in order (the first line, if an
  allow-list, starts from @default; `~` lines then remove; `~name:errno` keeps a call that fails
  with errno), groups expanded by `systemd-analyze syscall-filter`, SystemCallErrorNumber= (kill
  the process, or fail the call with that errno), SystemCallArchitectures=native, and the
  filters systemd adds for RestrictNamespaces= (clone3 -> ENOSYS), RestrictAddressFamilies=,
  RestrictRealtime=, LockPersonality=, MemoryDenyWriteExecute=, ProtectClock=,
  ProtectKernelModules=, ProtectKernelLogs=, ProtectKernelTunables=, ProtectHostname=; the
  SystemCallFilter= one is loaded last, as systemd does;
- a private mount namespace: ProtectSystem=strict (every mount but /dev and /proc read-only;
  /sys too with ProtectKernelTunables=), ProtectHome=yes (/home, /root, /run/user empty and
  inaccessible), PrivateTmp= (fresh /tmp and /var/tmp), ProtectProc=/ProcSubset= (a procfs of
  its own with hidepid=/subset=), and only StateDirectory=/CacheDirectory=/LogsDirectory=/
  RuntimeDirectory= writable, owned by the service user;
- DynamicUser=: an unused uid/gid (61234) with SupplementaryGroups=, HOME=/ (a dynamic user's
  home), CapabilityBoundingSet= (an empty one drops every capability), NoNewPrivileges=,
  UMask=, LimitNOFILE=, LoadCredential= (copied into $CREDENTIALS_DIRECTORY, 0400, like systemd);
- the environment systemd gives the service: Environment=, STATE_DIRECTORY, CACHE_DIRECTORY,
  CONFIGURATION_DIRECTORY, CREDENTIALS_DIRECTORY, NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID.

The paths systemd would use (/var/lib, /var/cache, /run, /etc/anonymizer) are a test folder's
subfolders (`Sandbox.root`): the specifiers %S %C %t %L %E and the *_DIRECTORY variables point
there, and `substitute` maps the install paths of ExecStart= (/opt/anonymizer) to the checkout.

Not emulated (each named in NOT_EMULATED with the reason): cgroup settings (MemoryMax= is
checked by the test against the daemon's peak RSS instead), DevicePolicy=/DeviceAllow= (a
cgroup device filter), RestrictSUIDSGID=, RemoveIPC=, PrivateMounts= (implied: the namespace is
private anyway). A [Service] key the launcher does not know fails the plan, so that a new
hardening line cannot go untested unnoticed.

One deliberate hole: `Sandbox.plan(expose=...)` keeps host folders readable that ProtectHome=
hides, for the test interpreter's prefix when it lives under /root (this project's machines
run a pyenv build; an installed gateway's venv uses /usr/bin/python3.11).

Launcher: `python tests/unit_sandbox.py PLAN.json` (as root): it sets the sandbox up in its own
process and exec()s the command, so the command's pid is the launcher's (signals reach it).
`describe_exit()` names the call a SIGSYS was for, from the kernel log (audit type=1326), and
UNIT_SANDBOX_AUDIT=1 in the launcher's environment turns what SystemCallFilter= refuses into
logged-and-allowed (SCMP_ACT_LOG), to list everything a filter lacks in one run (dmesg).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import grp
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_UID = 61234  # a free uid in systemd's dynamic range (61184-65519)
CGROUP_SETTINGS = {"MemoryMax", "MemoryHigh", "MemorySwapMax", "TasksMax", "CPUQuota",
                   "CPUWeight", "IOWeight"}
NOT_EMULATED = {
    # service management, not sandboxing
    "Type", "NotifyAccess", "ExecReload", "ExecStop", "ExecStopPost", "TimeoutStartSec",
    "TimeoutStopSec", "KillMode", "Restart", "RestartSec", "User", "Group", "DynamicUser",
    # cgroup-based: no systemd, no cgroup of the unit; MemoryMax= is compared with peak RSS
    *CGROUP_SETTINGS, "DevicePolicy", "DeviceAllow",
    # irrelevant to a daemon that creates no set-id files and no SysV IPC objects
    "RestrictSUIDSGID", "RemoveIPC",
    # the launcher's mount namespace is private anyway
    "PrivateMounts",
}
EMULATED = {
    "ExecStart", "ExecStartPre", "Environment", "WatchdogSec", "StateDirectory",
    "CacheDirectory", "ConfigurationDirectory", "LogsDirectory", "RuntimeDirectory",
    "LoadCredential", "SupplementaryGroups", "NoNewPrivileges", "ProtectSystem", "ProtectHome",
    "PrivateTmp", "ProtectProc", "ProcSubset", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "RestrictNamespaces", "RestrictRealtime", "LockPersonality", "MemoryDenyWriteExecute",
    "RestrictAddressFamilies", "SystemCallArchitectures", "SystemCallFilter",
    "SystemCallErrorNumber", "CapabilityBoundingSet", "AmbientCapabilities", "UMask",
    "LimitNOFILE",
}

LIBSECCOMP = "/usr/lib/x86_64-linux-gnu/libseccomp.so.2"


# --- the unit file -----------------------------------------------------------------------------


@dataclass
class Unit:
    """A unit file's assignments, in order, per section (comments, continuations handled)."""

    path: Path
    name: str
    sections: dict[str, list[tuple[str, str]]]

    @classmethod
    def parse(cls, path: Path, name: str | None = None) -> Unit:
        sections: dict[str, list[tuple[str, str]]] = {}
        current: list[tuple[str, str]] | None = None
        pending = ""
        for raw in Path(path).read_text().splitlines():
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], [])
                continue
            key, sep, value = line.partition("=")
            if not sep or current is None:
                raise ValueError(f"{path}: cannot parse {raw!r}")
            current.append((key.strip(), value.strip()))
        return cls(Path(path), name or Path(path).name, sections)

    def values(self, key: str, section: str = "Service") -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def last(self, key: str, default: str | None = None) -> str | None:
        values = self.values(key)
        return values[-1] if values else default

    def words(self, key: str) -> list[str]:
        """A list setting: assignments accumulate, an empty one resets."""
        out: list[str] = []
        for value in self.values(key):
            out = out + value.split() if value else []
        return out

    def flag(self, key: str) -> bool:
        return parse_bool(self.last(key, "no") or "no")

    def service_keys(self) -> set[str]:
        return {k for k, _ in self.sections.get("Service", [])}


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "y", "true", "t", "on"):
        return True
    if lowered in ("0", "no", "n", "false", "f", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def expand_specifiers(value: str, specifiers: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "%" and i + 1 < len(value):
            key = value[i + 1]
            if key == "%":
                out.append("%")
            elif key in specifiers:
                out.append(specifiers[key])
            else:
                raise ValueError(f"specifier %{key} not emulated (in {value!r})")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_environment(values: list[str], specifiers: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        if not value:
            env.clear()
            continue
        for word in shlex.split(value):
            key, sep, val = word.partition("=")
            if not sep:
                raise ValueError(f"Environment= entry without '=': {word!r}")
            env[key] = expand_specifiers(val, specifiers)
    return env


def parse_bytes(value: str) -> int | None:
    """MemoryMax=-style sizes (K, M, G, T: powers of 1024); None for infinity."""
    value = value.strip()
    if value in ("", "infinity"):
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if value[-1].upper() in units:
        return int(float(value[:-1]) * units[value[-1].upper()])
    return int(value)


def parse_seconds(value: str) -> float:
    """WatchdogSec=-style time spans: '30', '30s', '1min', '500ms'."""
    value = value.strip()
    for suffix, scale in (("ms", 1e-3), ("min", 60.0), ("s", 1.0), ("h", 3600.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def parse_errno(value: str) -> int:
    """An errno name or number, or 'kill' (-1: the process is killed)."""
    value = value.strip()
    if value in ("", "kill"):
        return KILL
    if value.isdigit():
        return int(value)
    number = getattr(errno, value, None)
    if not isinstance(number, int):
        raise ValueError(f"unknown errno {value!r}")
    return number


def exec_command(value: str, specifiers: dict[str, str], substitute: dict[str, str]
                 ) -> list[str]:
    """ExecStart=-style line -> argv (prefixes -@:+! dropped; install paths substituted)."""
    while value and value[0] in "-@:+!":
        value = value[1:]
    argv = []
    for word in shlex.split(value):
        word = expand_specifiers(word, specifiers)
        for old, new in substitute.items():
            if word == old or word.startswith(old + "/"):
                word = new + word[len(old):]
        argv.append(word)
    return argv


# --- system call filters -------------------------------------------------------------------------

KILL = -1  # the negative action: kill the process
ALLOW = -2


@functools.cache
def syscall_groups() -> dict[str, tuple[str, ...]]:
    """Every @group of the installed systemd (`systemd-analyze syscall-filter`), unexpanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.strip() or not line.startswith(" "):
            current = None  # a blank line, or the list of calls in no group
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return {name: tuple(members) for name, members in groups.items()}


def expand(name: str, groups: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """A syscall name, or every syscall of a @group (recursively)."""
    groups = syscall_groups() if groups is None else groups
    if not name.startswith("@"):
        return [name]
    if name not in groups:
        raise ValueError(f"unknown system call group {name} (systemd-analyze syscall-filter)")
    out: list[str] = []
    for member in groups[name]:
        out += expand(member, groups)
    return out


def syscall_filter(unit: Unit) -> tuple[bool, dict[str, int]]:
    """(allow_list, {syscall: errno or KILL or ALLOW}) as systemd 252 builds it: in an
    allow-list ALLOW means allowed; in a deny-list every entry gets the negative action (KILL:
    the SystemCallErrorNumber= default) unless it names its own errno."""
    entries: dict[str, int] | None = None
    allow_list = False
    for value in unit.values("SystemCallFilter"):
        if not value:
            entries, allow_list = None, False
            continue
        invert = value.startswith("~")
        value = value[1:] if invert else value
        if entries is None:
            entries = {}
            allow_list = not invert
            if allow_list:  # "Accept default syscalls if we are on an allow_list"
                entries.update(dict.fromkeys(expand("@default"), ALLOW))
        for word in value.split():
            name, _, number = word.partition(":")
            code = parse_errno(number) if number else ALLOW
            if not invert and code != ALLOW:
                raise ValueError(f"allow-listed system calls cannot take an errno: {word}")
            for call in expand(name):
                if (not invert) == allow_list or (invert and allow_list and code != ALLOW):
                    entries[call] = code if invert else ALLOW
                else:
                    entries.pop(call, None)
    return allow_list, entries or {}


def _deny(calls: list[str], code: int = errno.EPERM) -> dict:
    return {"default": ALLOW, "rules": [[call, code, []] for call in calls]}


# libseccomp's comparison operators
CMP_NE, CMP_LT, CMP_EQ, CMP_GT, CMP_MASKED_EQ = 1, 2, 4, 6, 7
NAMESPACE_FLAGS = {"cgroup": 0x02000000, "ipc": 0x08000000, "net": 0x40000000,
                   "mnt": 0x00020000, "pid": 0x20000000, "user": 0x10000000,
                   "uts": 0x04000000}


def seccomp_filters(unit: Unit) -> list[dict]:
    """Every seccomp filter the unit implies, in systemd's order (SystemCallFilter= last).
    A filter: {"default": action, "rules": [[syscall, action, [[arg, op, a, b], ...]], ...],
    "native_only": bool}; an action is ALLOW, KILL or an errno."""
    filters: list[dict] = []
    if unit.last("SystemCallArchitectures") not in (None, ""):
        if unit.words("SystemCallArchitectures") != ["native"]:
            raise ValueError("only SystemCallArchitectures=native is emulated")
        filters.append({"default": ALLOW, "rules": [], "native_only": True})
    restrict = unit.last("RestrictNamespaces", "no") or "no"
    try:
        retained = set() if parse_bool(restrict) else set(NAMESPACE_FLAGS)
    except ValueError:
        names = restrict.lstrip("~").split()
        retained = (set(NAMESPACE_FLAGS) - set(names)) if restrict.startswith("~") \
            else set(names)
    if retained != set(NAMESPACE_FLAGS):
        rules: list = [["clone3", errno.ENOSYS, []]]
        rules.append(["setns", errno.EPERM, [] if not retained else [[1, CMP_EQ, 0, 0]]])
        for name, flag in NAMESPACE_FLAGS.items():
            if name in retained:
                continue
            cond = [[0, CMP_MASKED_EQ, flag, flag]]
            rules += [["unshare", errno.EPERM, cond], ["clone", errno.EPERM, cond]]
            if retained:
                rules.append(["setns", errno.EPERM, [[1, CMP_MASKED_EQ, flag, flag]]])
        filters.append({"default": ALLOW, "rules": rules})
    if unit.flag("ProtectClock"):
        filters.append(_deny(expand("@clock")))
    if unit.flag("ProtectKernelModules"):
        filters.append(_deny(expand("@module")))
    if unit.flag("ProtectKernelLogs"):
        filters.append(_deny(["syslog"]))
    if unit.flag("ProtectKernelTunables"):
        filters.append(_deny(["_sysctl"]))
    if unit.flag("ProtectHostname"):
        filters.append(_deny(["sethostname", "setdomainname"]))
    families = unit.words("RestrictAddressFamilies")
    if families:
        filters.append(_address_families(families))
    if unit.flag("RestrictRealtime"):
        # SCHED_OTHER 0, SCHED_BATCH 3, SCHED_IDLE 5 allowed; FIFO 1, RR 2, 4 and > 5 refused
        rules = [["sched_setscheduler", errno.EPERM, [[1, CMP_EQ, p, 0]]] for p in (1, 2, 4)]
        rules.append(["sched_setscheduler", errno.EPERM, [[1, CMP_GT, 5, 0]]])
        filters.append({"default": ALLOW, "rules": rules})
    if unit.flag("LockPersonality"):
        filters.append({"default": ALLOW,
                        "rules": [["personality", errno.EPERM, [[0, CMP_NE, 0, 0]]]]})
    if unit.flag("MemoryDenyWriteExecute"):
        wx = 0x2 | 0x4  # PROT_WRITE | PROT_EXEC
        filters.append({"default": ALLOW, "rules": [
            ["mmap", errno.EPERM, [[2, CMP_MASKED_EQ, wx, wx]]],
            ["mprotect", errno.EPERM, [[2, CMP_MASKED_EQ, 0x4, 0x4]]],
            ["pkey_mprotect", errno.EPERM, [[2, CMP_MASKED_EQ, 0x4, 0x4]]],
            ["shmat", errno.EPERM, [[2, CMP_MASKED_EQ, 0o100000, 0o100000]]],
        ]})
    allow_list, entries = syscall_filter(unit)
    if allow_list or entries:
        negative = parse_errno(unit.last("SystemCallErrorNumber", "") or "")
        rules = []
        for call, code in sorted(entries.items()):
            if allow_list:
                action = ALLOW if code == ALLOW else code
            else:
                action = negative if code == ALLOW else code
            rules.append([call, action, []])
        filters.append({"default": negative if allow_list else ALLOW, "rules": rules,
                        "syscall_filter": True})
    return filters


def _address_families(words: list[str]) -> dict:
    """RestrictAddressFamilies=: socket() of any other family fails with EAFNOSUPPORT."""
    invert = words[0].startswith("~")
    names = [words[0].lstrip("~"), *words[1:]]
    if names == ["none"]:
        return {"default": ALLOW, "rules": [["socket", errno.EAFNOSUPPORT, []]]}
    numbers = sorted({int(getattr(socket, name)) for name in names})

    def refuse(op: int, value: int) -> list:
        return ["socket", errno.EAFNOSUPPORT, [[0, op, value, 0]]]

    if invert:
        return {"default": ALLOW, "rules": [refuse(CMP_EQ, n) for n in numbers]}
    rules = [refuse(CMP_LT, numbers[0]), refuse(CMP_GT, numbers[-1])]
    rules += [refuse(CMP_EQ, af) for af in range(numbers[0], numbers[-1]) if af not in numbers]
    return {"default": ALLOW, "rules": rules}


# --- the plan -------------------------------------------------------------------------------------

# setting: (its system path, the specifier standing for it, the variable naming it)
DIRECTORIES = {
    "StateDirectory": ("/var/lib", "S", "STATE_DIRECTORY"),
    "CacheDirectory": ("/var/cache", "C", "CACHE_DIRECTORY"),
    "LogsDirectory": ("/var/log", "L", "LOGS_DIRECTORY"),
    "RuntimeDirectory": ("/run", "t", "RUNTIME_DIRECTORY"),
    "ConfigurationDirectory": ("/etc", "E", "CONFIGURATION_DIRECTORY"),
}


@dataclass
class Sandbox:
    """A test folder standing in for the system paths of one service, and the plans (JSON)
    that run the unit's commands in it."""

    unit: Unit
    root: Path
    substitute: dict[str, str] = field(default_factory=dict)
    uid: int = SERVICE_UID

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.specifiers = {
            "S": str(self.root / "var/lib"), "C": str(self.root / "var/cache"),
            "L": str(self.root / "var/log"), "t": str(self.root / "run"),
            "E": str(self.root / "etc"), "T": "/tmp", "V": "/var/tmp",
            "n": self.unit.name, "N": self.unit.name.rsplit(".", 1)[0],
            "h": "/",
        }
        unknown = self.unit.service_keys() - EMULATED - NOT_EMULATED
        if unknown:
            raise ValueError(f"{self.unit.path}: [Service] keys the sandbox does not emulate:"
                             f" {', '.join(sorted(unknown))} (teach tests/unit_sandbox.py)")
        # the system paths of the unit's directories, in ExecStart= and LoadCredential= lines
        # (/etc/anonymizer/config.yaml): the sandbox's own
        for key, (system, spec, _) in DIRECTORIES.items():
            for name in self.unit.words(key):
                self.substitute.setdefault(f"{system}/{name}", f"{self.specifiers[spec]}/{name}")
        self.notify_socket = self.root / "run/systemd/notify"
        self.credentials = self.root / "run/credentials" / self.unit.name
        self.writable: list[Path] = []
        self.env: dict[str, str] = {}
        self._directories()

    def _mkdir(self, path: Path, mode: int = 0o755, owner: int | None = None) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        for parent in [path, *path.parents]:
            if parent == self.root:
                break
            parent.chmod(0o755)
        path.chmod(mode)
        if owner is not None:
            os.chown(path, owner, owner)
        return path

    def _directories(self) -> None:
        """The unit's *Directory= folders, owned by the service user (but the configuration,
        root's and read-only) and named in $*_DIRECTORY, as systemd does."""
        for key, (_, spec, variable) in DIRECTORIES.items():
            writable = key != "ConfigurationDirectory"
            paths = [self._mkdir(Path(self.specifiers[spec]) / name,
                                 owner=self.uid if writable else None)
                     for name in self.unit.words(key)]
            if paths:
                self.writable += paths if writable else []
                self.env[variable] = ":".join(map(str, paths))
        self._mkdir(self.notify_socket.parent)

    def path(self, unit_path: str) -> Path:
        """Where a path written in the unit (/etc/anonymizer/x, /opt/anonymizer/y) is here."""
        mapped = exec_command(shlex.quote(unit_path), self.specifiers, self.substitute)[0]
        return Path(mapped)

    def credentials_env(self) -> dict[str, str]:
        """LoadCredential=NAME:PATH: PATH (mapped) copied to $CREDENTIALS_DIRECTORY/NAME, 0400,
        owned by the service user, in a 0500 folder (systemd's layout)."""
        entries = [v.split(":", 1) for v in self.unit.values("LoadCredential") if v]
        if not entries:
            return {}
        self._mkdir(self.credentials, 0o500, owner=self.uid)
        for name, source in entries:
            target = self.credentials / name
            shutil.copyfile(self.path(source), target)
            os.chown(target, self.uid, self.uid)
            target.chmod(0o400)
        return {"CREDENTIALS_DIRECTORY": str(self.credentials)}

    def credential_names(self) -> list[str]:
        return [v.split(":", 1)[0] for v in self.unit.values("LoadCredential") if v]

    def commands(self, key: str) -> list[list[str]]:
        return [exec_command(v, self.specifiers, self.substitute)
                for v in self.unit.values(key) if v]

    def plan(self, argv: list[str], expose: list[str] = ()) -> dict:
        """What the launcher applies before exec()ing argv. `expose`: host folders kept
        readable (read-only) although the sandbox hides them (the test interpreter's prefix
        when it lives under /root: a pyenv build; a real install uses /usr/bin/python3)."""
        unit = self.unit
        groups = [grp.getgrnam(name).gr_gid for name in unit.words("SupplementaryGroups")]
        user = unit.last("User") or unit.name.rsplit(".", 1)[0]
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/", "USER": user, "LOGNAME": user,
            "SHELL": "/usr/sbin/nologin", "INVOCATION_ID": os.urandom(16).hex(),
            "NOTIFY_SOCKET": str(self.notify_socket),
            **self.env, **self.credentials_env(),
            **parse_environment(unit.values("Environment"), self.specifiers),
        }
        watchdog = unit.last("WatchdogSec")
        nofile = unit.last("LimitNOFILE")
        limits = {}
        if nofile:
            soft, _, hard = nofile.partition(":")
            limits["NOFILE"] = [_limit(soft), _limit(hard or soft)]
        protect_system = unit.last("ProtectSystem", "no")
        if protect_system not in ("strict", "no"):
            raise ValueError(f"ProtectSystem={protect_system} not emulated (only strict, no)")
        protect_home = unit.last("ProtectHome", "no")
        if protect_home not in ("yes", "no"):
            raise ValueError(f"ProtectHome={protect_home} not emulated (only yes, no)")
        bounding = unit.last("CapabilityBoundingSet")
        if bounding not in (None, ""):
            raise ValueError("only an empty CapabilityBoundingSet= is emulated")
        if unit.words("AmbientCapabilities"):
            raise ValueError("AmbientCapabilities= not emulated")
        return {
            "argv": argv, "env": env, "cwd": "/",
            "uid": self.uid, "gid": self.uid, "groups": groups,
            "umask": int(unit.last("UMask", "0022") or "0022", 8),
            "limits": limits,
            "watchdog_usec": int(parse_seconds(watchdog) * 1e6) if watchdog else None,
            "drop_capabilities": bounding is not None,
            "no_new_privileges": True,  # implied by SystemCallFilter= for a non-root user
            "read_only_system": protect_system == "strict",
            "read_only_sys": unit.flag("ProtectKernelTunables"),
            "read_only_cgroup": unit.flag("ProtectControlGroups"),
            "hidepid": unit.last("ProtectProc", "default"),
            "proc_subset": unit.last("ProcSubset", "all"),
            "inaccessible": ["/home", "/root", "/run/user"] if protect_home == "yes" else [],
            "private_tmp": unit.flag("PrivateTmp"),
            "sandbox_root": str(self.root),
            "writable": [str(p) for p in self.writable],
            "expose": list(expose),
            "seccomp": seccomp_filters(unit),
        }

    def popen(self, argv: list[str], log: Path, expose: list[str] = ()
              ) -> subprocess.Popen[bytes]:
        plan_path = log.with_suffix(".plan.json")
        plan_path.write_text(json.dumps(self.plan(argv, expose), indent=1))
        out = log.open("ab")
        try:
            return subprocess.Popen([sys.executable, __file__, str(plan_path)],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        finally:
            out.close()


def _limit(value: str) -> int:
    return resource.RLIM_INFINITY if value == "infinity" else int(value)


def unavailable() -> str | None:
    """Why the sandbox cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "the sandbox needs root (mount namespace, setuid to the service user)"
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed (apt-get install systemd)"
    if not Path(LIBSECCOMP).exists() and ctypes.util.find_library("seccomp") is None:
        return "libseccomp is not installed (apt-get install libseccomp2)"
    return None


def describe_exit(code: int | None, pid: int | None = None) -> str:
    """'exit status 1', 'killed by SIGSYS (... mbind)': how a sandboxed process ended."""
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        if -code != signal.SIGSYS:
            return f"killed by {name}"
        call = refused_syscall(pid) if pid is not None else None
        return (f"killed by {name} (a system call outside SystemCallFilter="
                f"{': ' + call if call else ''})")
    return f"exit status {code}"


def refused_syscall(pid: int) -> str | None:
    """The call seccomp killed `pid` for, from the kernel log (audit type=1326), if readable."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
        lib = ctypes.CDLL(LIBSECCOMP)
    except (OSError, subprocess.SubprocessError):
        return None
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p  # a malloc()ed string
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    for line in reversed(log.splitlines()):
        if "type=1326" in line and f" pid={pid} " in line and " sig=31 " in line:
            number = int(line.split(" syscall=")[1].split()[0])
            name = lib.seccomp_syscall_resolve_num_arch(0, number)  # 0: the native arch
            return (ctypes.string_at(name).decode() if name else "?") + f" (#{number})"
    return None


# --- the launcher (runs as root, applies a plan, exec()s) -------------------------------------

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
CLONE_NEWNS = 0x00020000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
_MOUNT_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                  "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                  "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags),
                       enc(data)), f"mount {target}")


def _mounts() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of this namespace, parents first."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        flags = 0
        for option in fields[5].split(","):
            flags |= _MOUNT_OPTIONS.get(option, 0)
        out.append((point, flags))
    return sorted(out, key=lambda m: m[0].count("/") if m[0] != "/" else 0)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _remount(point: str, flags: int, read_only: bool) -> None:
    _mount(None, point, None, MS_BIND | MS_REMOUNT | flags | (MS_RDONLY if read_only else 0))


def _bind(source: str, target: str, read_only: bool, flags: int = MS_NOSUID | MS_NODEV) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    _remount(target, flags, read_only)


def _tmpfs(target: str, mode: int) -> None:
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o}")


def _setup_mounts(plan: dict) -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    keep = {path: os.open(path, os.O_PATH | os.O_DIRECTORY)
            for path in [plan["sandbox_root"], *plan["expose"]]}
    if plan["read_only_system"]:  # ProtectSystem=strict: all but the API file systems
        for point, flags in _mounts():
            if _under(point, "/dev") or _under(point, "/proc"):
                continue
            if _under(point, "/sys") and not plan["read_only_sys"] and not (
                    plan["read_only_cgroup"] and _under(point, "/sys/fs/cgroup")):
                continue
            _remount(point, flags, True)
    options = []
    if plan["hidepid"] != "default":
        options.append(f"hidepid={plan['hidepid']}")
    if plan["proc_subset"] != "all":
        options.append(f"subset={plan['proc_subset']}")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ",".join(options) or None)
    if plan["read_only_sys"]:  # ProtectKernelTunables=
        for point in ("/proc/sys", "/proc/sysrq-trigger"):
            if os.path.exists(point):
                _bind(point, point, True)
    for point in plan["inaccessible"]:  # ProtectHome=yes
        if not Path(point).is_dir():
            continue
        exposed = [p for p in plan["expose"] if _under(p, point)]
        _tmpfs(point, 0o755 if exposed else 0o000)
        for path in exposed:
            os.makedirs(path, 0o755, exist_ok=True)
            _bind(f"/proc/self/fd/{keep[path]}", path, True, 0)
        _remount(point, MS_NOSUID | MS_NODEV, True)
    if plan["private_tmp"]:
        for point in ("/tmp", "/var/tmp"):
            _tmpfs(point, 0o1777)
    # the test folder standing in for /var/lib, /var/cache, /run, /etc: read-only but for the
    # unit's writable directories (PrivateTmp= hid it if it lies in /tmp: put it back)
    root = plan["sandbox_root"]
    os.makedirs(root, 0o755, exist_ok=True)
    _bind(f"/proc/self/fd/{keep[root]}", root, True)
    for path in plan["writable"]:
        _bind(path, path, False)
    for fd in keep.values():
        os.close(fd)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


SCMP_ACT_KILL_PROCESS, SCMP_ACT_LOG, SCMP_ACT_ALLOW = 0x80000000, 0x7FFC0000, 0x7FFF0000
# UNIT_SANDBOX_AUDIT=1: what SystemCallFilter= would refuse is allowed and logged to the kernel
# log instead (dmesg: audit type=1326 ... uid=61234 ... syscall=N): finds what a filter lacks
AUDIT = os.environ.get("UNIT_SANDBOX_AUDIT") == "1"
SCMP_FLTATR_ACT_BADARCH = 2


def _action(code: int) -> int:
    if code == ALLOW:
        return SCMP_ACT_ALLOW
    if code == KILL:
        return SCMP_ACT_KILL_PROCESS
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO


def _load_seccomp(filters: list[dict]) -> None:
    path = LIBSECCOMP if Path(LIBSECCOMP).exists() else ctypes.util.find_library("seccomp")
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_exact_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                 ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    for spec in filters:
        audit = AUDIT and spec.get("syscall_filter", False)

        def action(code: int, audit: bool = audit) -> int:
            return SCMP_ACT_LOG if audit and code != ALLOW else _action(code)

        default = action(spec["default"])
        ctx = lib.seccomp_init(default)
        if not ctx:
            raise OSError("seccomp_init failed")
        # like systemd: the architecture check is a filter of its own (badarch: kill)
        badarch = SCMP_ACT_KILL_PROCESS if spec.get("native_only") else SCMP_ACT_ALLOW
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, badarch), "seccomp_attr_set")
        for name, code, conditions in spec["rules"]:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == -1:  # unknown to this libseccomp: systemd ignores it too
                continue
            args = (_ArgCmp * max(len(conditions), 1))(*[_ArgCmp(*c) for c in conditions])
            if action(code) == default:  # (UNIT_SANDBOX_AUDIT: refused calls all log)
                continue
            result = lib.seccomp_rule_add_exact_array(ctx, action(code), number,
                                                      len(conditions), args)
            if result == -errno.EDOM:  # not a system call of this architecture
                continue
            if result != 0:
                raise OSError(-result, f"seccomp rule for {name}: {os.strerror(-result)}")
        result = lib.seccomp_load(ctx)
        lib.seccomp_release(ctx)
        if result != 0:
            raise OSError(-result, f"seccomp_load: {os.strerror(-result)}")


def launch(plan: dict) -> None:
    """Apply `plan` to this process and exec() its command (never returns)."""
    os.umask(0o022)
    last_capability = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    _setup_mounts(plan)
    for name, (soft, hard) in plan["limits"].items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (soft, hard))
    env = dict(plan["env"])
    if plan["watchdog_usec"]:
        env["WATCHDOG_USEC"] = str(plan["watchdog_usec"])
        env["WATCHDOG_PID"] = str(os.getpid())  # the exec()ed daemon keeps this pid
    os.chdir(plan["cwd"])
    if plan["drop_capabilities"]:  # CapabilityBoundingSet= (empty)
        for cap in range(last_capability + 1):
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"PR_CAPBSET_DROP {cap}")
    os.setgroups(plan["groups"])
    os.setresgid(plan["gid"], plan["gid"], plan["gid"])
    os.setresuid(plan["uid"], plan["uid"], plan["uid"])  # clears every capability
    os.umask(plan["umask"])
    # the daemon dies with the test (the setting is reset by a change of uid: set it after)
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
    if plan["no_new_privileges"]:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    sys.stdout.flush()
    _load_seccomp(plan["seccomp"])  # SystemCallFilter= last: nothing but execve() follows
    os.execve(plan["argv"][0], plan["argv"], env)


if __name__ == "__main__":
    launch(json.loads(Path(sys.argv[1]).read_text()))
