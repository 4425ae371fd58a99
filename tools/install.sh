#!/bin/sh
# Install minibt as a systemd service (config/minibt.service), from a checkout of this repository:
#
#   sudo tools/install.sh --admin pi
#
# Steps: system group + user `minibt` (no login, home /var/lib/minibt); /opt/minibt as a venv with
# minibt pip-installed; /var/lib/minibt (state, 0750), /srv/torrents and /srv/torrents/watch
# (minibt:minibt, 2775: members of group minibt drop .torrent files and read downloads);
# /etc/minibt/minibt.toml from config/minibt.toml (root:minibt 0640, kept if it exists); the unit
# in /etc/systemd/system; `systemctl enable --now minibt`; --admin USER joins group minibt to run
# `minibt status` without sudo.  Idempotent: a second run changes nothing that is already there.
#
# --root DIR installs below DIR instead of / (a scratch root, as the tests do): users and groups go
# into DIR/etc/passwd and DIR/etc/group (useradd --prefix), and the unit is enabled with
# `systemctl --root` (no running systemd needed); the venv's scripts then point into DIR.
set -eu

ROOT=""
PREFIX=/opt/minibt
DATA=/srv/torrents
PYTHON=python3
PIP_ARGS=""
ADMIN=""
START=1
SRC=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    cat <<EOF
usage: $0 [--root DIR] [--prefix /opt/minibt] [--data /srv/torrents] [--python python3]
          [--pip-args "ARGS"] [--admin USER] [--no-start]
EOF
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?}; shift 2 ;;
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --data) DATA=${2:?}; shift 2 ;;
        --python) PYTHON=${2:?}; shift 2 ;;
        --pip-args) PIP_ARGS=${2?}; shift 2 ;;
        --admin) ADMIN=${2:?}; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown argument $1" >&2; usage ;;
    esac
done
case "$PREFIX$DATA" in *[!A-Za-z0-9/._-]*) echo "install.sh: --prefix/--data: plain paths only" >&2; exit 2 ;; esac
ROOT=${ROOT%/}
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo $0 ...)" >&2
    exit 1
fi
step() { echo "install.sh: $*"; }

# 1. The system group and user the daemon runs as.
if [ -n "$ROOT" ]; then
    ACCOUNTS="--prefix $ROOT"
else
    ACCOUNTS=""
fi
lookup() {  # lookup passwd|group NAME -> the numeric id, or nothing
    awk -F: -v n="$2" '$1 == n { print $3 }' "$ROOT/etc/$1"
}
if [ -z "$(lookup group minibt)" ]; then
    step "group minibt"
    # shellcheck disable=SC2086
    groupadd $ACCOUNTS --system minibt
fi
if [ -z "$(lookup passwd minibt)" ]; then
    step "user minibt"
    # shellcheck disable=SC2086
    useradd $ACCOUNTS --system --gid minibt --home-dir /var/lib/minibt --no-create-home \
        --shell /usr/sbin/nologin --comment "minibt BitTorrent daemon" minibt
fi
UID_=$(lookup passwd minibt)
GID_=$(lookup group minibt)
if [ -n "$ADMIN" ]; then
    step "user $ADMIN joins group minibt (log in again for it to count)"
    # shellcheck disable=SC2086
    usermod $ACCOUNTS --append --groups minibt "$ADMIN"
fi

# 2. Directories.  systemd's StateDirectory= also makes /var/lib/minibt at each start (mode from the unit).
install -d -m 0755 "$ROOT/etc/minibt" "$ROOT/etc/systemd/system" "$ROOT$(dirname "$PREFIX")"
install -d -o "$UID_" -g "$GID_" -m 0750 "$ROOT/var/lib/minibt"
install -d -o "$UID_" -g "$GID_" -m 2775 "$ROOT$DATA" "$ROOT$DATA/watch"

# 3. The venv (Raspberry Pi OS refuses system-wide pip installs).
if [ ! -x "$ROOT$PREFIX/bin/python" ]; then
    step "venv $PREFIX"
    "$PYTHON" -m venv "$ROOT$PREFIX"
fi
step "pip install minibt into $PREFIX"
# shellcheck disable=SC2086
"$ROOT$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$SRC"

# 4. The config: readable by the daemon and by group minibt (`minibt status`), an edited one is kept.
CONF="$ROOT/etc/minibt/minibt.toml"
if [ ! -e "$CONF" ]; then
    step "config /etc/minibt/minibt.toml"
    sed -e 's|^state_dir = "[^"]*"|state_dir = "/var/lib/minibt"|' \
        -e "s|^download_dir = \"[^\"]*\"|download_dir = \"$DATA\"|" \
        -e "s|^watch_dir = \"[^\"]*\"|watch_dir = \"$DATA/watch\"|" \
        "$SRC/config/minibt.toml" > "$CONF.tmp"
    chown "0:$GID_" "$CONF.tmp"
    chmod 0640 "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
fi

# 5. The unit, with the paths chosen above.
step "unit /etc/systemd/system/minibt.service"
sed -e "s|/opt/minibt|$PREFIX|g" -e "s|/srv/torrents|$DATA|g" "$SRC/config/minibt.service" \
    > "$ROOT/etc/systemd/system/minibt.service"
chmod 0644 "$ROOT/etc/systemd/system/minibt.service"

# 6. Enable (and start, on a running system).
if [ -n "$ROOT" ]; then
    systemctl --root="$ROOT" enable minibt.service
elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$START" = 1 ]; then
        systemctl enable --now minibt.service
    else
        systemctl enable minibt.service
    fi
else
    echo "install.sh: systemd is not running here: enable it later with 'systemctl enable --now minibt'"
fi
step "done.  Edit /etc/minibt/minibt.toml, then: sudo systemctl reload minibt; minibt status: $PREFIX/bin/minibt status -c /etc/minibt/minibt.toml"
