#!/bin/sh
# Shipped by amberpi: what the device tools share. Sourced, never run:
#
#   PROG=amberpi-x
#   # shellcheck source=../lib/amberpi/lib.sh
#   . "${AMBERPI_LIB:-${0%/*}/../lib/amberpi/lib.sh}"
#
# Also copied into the initramfs (hooks/amberpi), so it sticks to what
# busybox sh and busybox's applets offer there; findmnt and lsblk may be
# missing. Every path is overridable (AMBERPI_*) so the tools can be tested
# on a build host against plain files.
#
# Exit status of the callers' helpers: fail 1, usage 2, refuse 3.

PROG="${PROG:-amberpi}"
CMDLINE_FILE="${AMBERPI_CMDLINE_FILE:-/proc/cmdline}"
RUN_DIR="${AMBERPI_RUN_DIR:-/run/amberpi}"
MEDIUM_DIR="${AMBERPI_MEDIUM_DIR:-/run/live/medium}"
# The system partition's .disk/*.conf, copied by the initramfs (live-premount/
# amberpi-mode) before live-boot: in toram the medium in RAM holds only live/.
DISK_CONF_DIR="${AMBERPI_DISK_CONF_DIR:-$RUN_DIR/disk}"
PERSISTENCE_DIR="${AMBERPI_PERSISTENCE_DIR:-/run/live/persistence}"
PROFILE="${AMBERPI_PROFILE:-/etc/amberpi/resilience.conf}"
MOUNTS_FILE="${AMBERPI_MOUNTS_FILE:-/proc/mounts}"
DEV_DIR="${AMBERPI_DEV_DIR:-/dev}"
SYS_DIR="${AMBERPI_SYS_DIR:-/sys}"
# The boot's decisions, written by the initramfs (scripts/live-premount/amberpi-mode).
MODE_FILE="$RUN_DIR/mode"
# This boot's system partition, when the initramfs chose it (see "this boot's disk").
BOOT_PARTITION_FILE="$RUN_DIR/system-partition"
MODES="persistent readonly toram toram-persistent"

say() { echo "$PROG: $*"; }
warn() { echo "$PROG: warning: $*" >&2; }
fail() { echo "$PROG: error: $*" >&2; exit 1; }
refuse() { echo "$PROG: refused: $*" >&2; exit 3; }

# --- kernel command line ------------------------------------------------------

cmdline_value() {
	# The value of the first NAME= on the kernel command line, or empty.
	read -r _cmdline < "$CMDLINE_FILE" || true
	set -f
	for _arg in $_cmdline; do
		case "$_arg" in "$1"=*) echo "${_arg#*=}"; set +f; return 0 ;; esac
	done
	set +f
	return 0
}

cmdline_last() {
	# The value of the last NAME= on the kernel command line (what a person
	# appended at the GRUB prompt wins), or empty.
	read -r _cmdline < "$CMDLINE_FILE" || true
	_found=
	set -f
	for _arg in $_cmdline; do
		case "$_arg" in "$1"=*) _found=${_arg#*=} ;; esac
	done
	set +f
	echo "$_found"
}

cmdline_count() {
	# How many times NAME= appears on the kernel command line.
	read -r _cmdline < "$CMDLINE_FILE" || true
	_n=0
	set -f
	for _arg in $_cmdline; do
		case "$_arg" in "$1"=*) _n=$((_n + 1)) ;; esac
	done
	set +f
	echo "$_n"
}

# --- this image -----------------------------------------------------------------

image_conf() {
	# A key from the system partition's .disk/amberpi.conf (written at build
	# time): the initramfs's copy, else the mounted medium's.
	_conf="$DISK_CONF_DIR/amberpi.conf"
	[ -f "$_conf" ] || _conf="$MEDIUM_DIR/.disk/amberpi.conf"
	sed -n "s/^$1=//p" "$_conf" 2>/dev/null | head -n 1
}

image_id() {
	_id=$(cmdline_value amberpi.id)
	[ -n "$_id" ] || _id=$(image_conf image_id)
	echo "$_id"
}

system_label() {
	# The system partition's label: recorded at build time, or named by
	# live-media= (the initramfs has not mounted the medium yet).
	_label=$(image_conf system_label)
	if [ -z "$_label" ]; then
		_label=$(cmdline_value live-media)
		case "$_label" in
			/dev/disk/by-label/*) _label=${_label#/dev/disk/by-label/} ;;
			*) _label="AMBERPI_SYS_$(image_id | tr 'a-f' 'A-F')" ;;
		esac
	fi
	echo "$_label"
}

persistence_label() {
	_label=$(image_conf persistence_label)
	[ -n "$_label" ] || _label=$(cmdline_value persistence-label)
	[ -n "$_label" ] || _label="amberpi-$(image_id)"
	echo "$_label"
}

# --- partitions -----------------------------------------------------------------
# Found by what they are: the system partition by its label (or where the
# medium is mounted), then its siblings on the same disk by number. Never a
# hard-coded /dev name.

system_partition() {
	# The one the initramfs chose for this boot (amberpi-media), when it did:
	# then never another, which could be a copy of this card.
	if [ -f "$BOOT_PARTITION_FILE" ]; then
		read -r _dev < "$BOOT_PARTITION_FILE" || true
		[ -n "$_dev" ] && [ -e "$_dev" ] || return 1
		echo "$_dev"
		return 0
	fi
	_dev=$(findmnt -n -o SOURCE "$MEDIUM_DIR" 2>/dev/null || true)
	case "$_dev" in /*) [ -e "$_dev" ] && { echo "$_dev"; return 0; } ;; esac
	_label=$(system_label)
	_dev=$(readlink -f "$DEV_DIR/disk/by-label/$_label" 2>/dev/null || true)
	[ -n "$_dev" ] && [ -e "$_dev" ] && [ "$_dev" != "$DEV_DIR/disk/by-label/$_label" ] && { echo "$_dev"; return 0; }
	_dev=$(blkid -L "$_label" 2>/dev/null || true)
	[ -n "$_dev" ] && [ -e "$_dev" ] && { echo "$_dev"; return 0; }
	return 1
}

disk_sysdir() {
	# The sysfs folder of the disk partition $1 belongs to.
	_sys=$(readlink -f "$SYS_DIR/class/block/${1##*/}" 2>/dev/null || true)
	[ -n "$_sys" ] && [ -f "$_sys/partition" ] || return 1
	echo "${_sys%/*}"
}

find_partition() {
	# Partition number $1 of the disk the system partition lives on; status 1
	# (and no message) when there is none.
	if [ -n "${AMBERPI_PART_DIR:-}" ]; then
		[ -e "$AMBERPI_PART_DIR/p$1" ] || return 1
		echo "$AMBERPI_PART_DIR/p$1"
		return 0
	fi
	_system=$(system_partition) || return 1
	sibling_partition "$_system" "$1"
}

sibling_partition() {
	# Partition number $2 of the disk partition $1 is on; status 1 when none.
	_diskdir=$(disk_sysdir "$1") || return 1
	for _part in "$_diskdir"/*/partition; do
		[ -f "$_part" ] || continue
		if [ "$(cat "$_part")" = "$2" ]; then
			_name=${_part%/partition}
			echo "$DEV_DIR/${_name##*/}"
			return 0
		fi
	done
	return 1
}

partition_device() {
	find_partition "$1" && return 0
	system_partition >/dev/null || fail "cannot find this image's system partition"
	fail "the disk of this image's system partition has no partition $1"
}

disk_device() {
	# The whole disk this image lives on.
	if [ -n "${AMBERPI_DISK:-}" ]; then
		echo "$AMBERPI_DISK"
		return 0
	fi
	_system=$(system_partition) || fail "cannot find this image's system partition"
	_diskdir=$(disk_sysdir "$_system") || fail "cannot find the disk of $_system"
	echo "$DEV_DIR/${_diskdir##*/}"
}

partition_label() {
	# The file system label on device $1, or empty. Parses blkid's
	# NAME="value" output, which util-linux and busybox print alike.
	blkid "$1" 2>/dev/null | sed -n 's/.* LABEL="\([^"]*\)".*/\1/p' | head -n 1
}

# --- this boot's disk ------------------------------------------------------------
# Every card written from one image carries the same labels, so labels alone
# cannot tell this device's card from a byte copy of it (a spare card, a
# backup in a USB reader). GRUB writes the token its grubenv holds as
# amberpi_claim on the disk it runs from and passes it on (amberpi.claim=);
# the initramfs takes the system partition on the disk whose grubenv holds
# that claim, records it here, and leaves a new token for the next boot. In
# the modes that write nothing GRUB passes the token unwritten (amberpi.token=).

labelled_partitions() {
	# Every partition whose file system label is $1, as device paths.
	for _part in "$SYS_DIR"/class/block/*; do
		[ -f "$_part/partition" ] || continue
		_dev="$DEV_DIR/${_part##*/}"
		if [ "$(partition_label "$_dev")" = "$1" ]; then echo "$_dev"; fi
	done
	return 0
}

disk_env_get() {
	# disk_env_get PARTITION NAME: NAME's value in grub/grubenv on partition 1
	# of PARTITION's disk (read with mtools, nothing mounted), or empty.
	_p1=$(sibling_partition "$1" 1) || return 0
	MTOOLS_SKIP_CHECK=1 mtype -i "$_p1" ::grub/grubenv 2>/dev/null | sed -n "s/^$2=//p" | head -n 1
}

matching_partitions() {
	# matching_partitions LABEL NAME VALUE: the partitions labelled LABEL whose
	# disk's grubenv holds NAME=VALUE.
	for _candidate in $(labelled_partitions "$1"); do
		if [ "$(disk_env_get "$_candidate" "$2")" = "$3" ]; then echo "$_candidate"; fi
	done
	return 0
}

new_token() {
	# 16 hex digits from the kernel's random source.
	od -A n -N 8 -t x1 "${AMBERPI_RANDOM:-/dev/urandom}" | tr -d ' \n'
}

# --- GRUB's environment block -------------------------------------------------
# grub/grubenv on p1 is rewritten in place on the raw partition, exactly as
# GRUB's save_env does: no file system is mounted or changed, so a power cut
# cannot damage the boot partition's FAT. Its byte offset in p1 is recorded
# at build time; all variables sit in its first sector.
ENV_BYTES=1024
ENV_HEADER="# GRUB Environment Block"

env_read() {
	_offset=$(image_conf grubenv_offset)
	[ -n "$_offset" ] || fail "this image records no grubenv offset"
	dd if="$(partition_device 1)" bs=512 skip=$((_offset / 512)) count=$((ENV_BYTES / 512)) 2>/dev/null
}

env_get() {
	env_read | sed -n "s/^$1=//p" | head -n 1
}

take_lock() {
	# Serialises every writer of grubenv and the kernel partition (amberpi-kernel
	# run by apt, by hand and at boot, amberpi-mode): a read-modify-write of the
	# block must not interleave with another. Held on fd 9 until the process
	# exits; taking it twice in one process is a no-op. Waits up to
	# AMBERPI_LOCK_WAIT seconds (a kernel write takes a minute or two).
	[ -z "${_amberpi_locked:-}" ] || return 0
	mkdir -p "$RUN_DIR"
	exec 9>>"$RUN_DIR/lock"
	if command -v flock >/dev/null 2>&1; then
		flock -w "${AMBERPI_LOCK_WAIT:-600}" 9 \
			|| fail "another amberpi tool has held $RUN_DIR/lock for ${AMBERPI_LOCK_WAIT:-600}s; nothing was changed"
	fi
	_amberpi_locked=1
}

env_set() {
	# env_set NAME=VALUE...: an empty VALUE removes NAME.
	take_lock
	_current=$(env_read)
	case "$_current" in "$ENV_HEADER"*) ;; *) _current="$ENV_HEADER" ;; esac
	_block=$(printf '%s\n' "$_current" | sed -n '/^[A-Za-z_][A-Za-z0-9_]*=/p')
	for _pair in "$@"; do
		_name=${_pair%%=*}
		_block=$(printf '%s\n' "$_block" | sed "/^$_name=/d")
		[ -z "${_pair#*=}" ] || _block=$(printf '%s\n%s' "$_block" "$_pair")
	done
	_text=$(printf '%s\n%s' "$ENV_HEADER" "$_block" | sed '/^$/d')
	_length=$(printf '%s\n' "$_text" | wc -c)
	[ "$_length" -lt 512 ] || fail "GRUB environment would exceed one sector"
	_new="$RUN_DIR/grubenv.$$"
	mkdir -p "$RUN_DIR"
	{ printf '%s\n' "$_text"; head -c $((ENV_BYTES - _length)) /dev/zero | tr '\000' '#'; } > "$_new"
	_offset=$(image_conf grubenv_offset)
	dd if="$_new" of="$(partition_device 1)" bs=512 seek=$((_offset / 512)) conv=notrunc,fsync 2>/dev/null \
		|| fail "cannot write GRUB's environment block"
	rm -f "$_new"
	sync
}

# --- the resilience profile and this boot's state -------------------------------

kv_get() {
	# kv_get FILE KEY [DEFAULT]: the value of KEY=value in FILE (one pair of
	# surrounding quotes removed), or DEFAULT.
	_value=$(sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1)
	case "$_value" in
		\"*\") _value=${_value#\"}; _value=${_value%\"} ;;
		\'*\') _value=$(printf '%s\n' "$_value" | sed "s/^'//; s/'\$//; s/'\\\\''/'/g") ;;
	esac
	echo "${_value:-${3:-}}"
}

profile_get() { kv_get "$PROFILE" "$@"; }
state_get() { kv_get "$MODE_FILE" "$@"; }

valid_mode() {
	for _mode in $MODES; do
		[ "$1" = "$_mode" ] && return 0
	done
	return 1
}

mode_has_persistence() {
	case "$1" in persistent | toram-persistent) return 0 ;; esac
	return 1
}

persistence_mount() {
	# Where live-boot mounted this image's persistence partition, or status 1.
	if [ -n "${AMBERPI_PERSISTENCE_MOUNT:-}" ]; then
		[ -d "$AMBERPI_PERSISTENCE_MOUNT" ] || return 1
		echo "$AMBERPI_PERSISTENCE_MOUNT"
		return 0
	fi
	_p4=$(find_partition 4) || return 1
	while read -r _source _target _rest; do
		case "$_target" in "$PERSISTENCE_DIR"/*) ;; *) continue ;; esac
		if [ "$_source" = "$_p4" ] || [ "$(readlink -f "$_source" 2>/dev/null)" = "$(readlink -f "$_p4")" ]; then
			echo "$_target"
			return 0
		fi
	done < "$MOUNTS_FILE"
	return 1
}

root_upper() {
	# The overlay upper folder of / when it lies on the persistence partition
	# (persistence.conf's "/ union"), or status 1: the root lives in RAM.
	while read -r _source _target _type _options _rest; do
		if [ "$_target" != / ] || [ "$_type" != overlay ]; then continue; fi
		_upper=$(echo ",$_options," | sed -n 's/.*,upperdir=\([^,]*\),.*/\1/p')
		case "$_upper" in "$PERSISTENCE_DIR"/*) echo "$_upper"; return 0 ;; esac
	done < "$MOUNTS_FILE"
	return 1
}
