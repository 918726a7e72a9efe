"""Running under systemd: supervisor, signals, sd_notify, reload, credentials."""
