# shellcheck shell=sh
# Shipped by amberpi; the initramfs hook (hooks/amberpi) installs it as
# /usr/lib/live/boot/9999-amberpi-disk, which live-boot sources after its own
# components, so this storage_devices() replaces live-boot's.
#
# live-boot looks for persistence partitions by label on every disk, mounting
# some to look inside, so a byte copy of this card (same labels) in a USB
# reader would be probed, written and used. When the initramfs chose this
# boot's disk (scripts/live-premount/amberpi-media), only that disk is
# scanned; otherwise every disk, as live-boot does.
#
# storage_devices BLACKLIST WHITELIST: the block devices (whole disks and
# their partitions) to scan, one per line: none in BLACKLIST, and when
# WHITELIST is not empty only disks in it. Uses live-boot's sys2dev,
# subdevices and is_in_space_sep_list.

storage_devices() {
	_amberpi_only=
	if [ -f "${AMBERPI_RUN_DIR:-/run/amberpi}/system-disk" ]; then
		read -r _amberpi_only < "${AMBERPI_RUN_DIR:-/run/amberpi}/system-disk" || true
	fi
	for _amberpi_block in "${AMBERPI_SYS_DIR:-/sys}"/block/*; do
		case "${_amberpi_block##*/}" in loop* | ram* | fd*) continue ;; esac
		_amberpi_disk=$(sys2dev "$_amberpi_block")
		if [ -n "$_amberpi_only" ] && [ "$_amberpi_disk" != "$_amberpi_only" ]; then continue; fi
		# The lists are space-separated words, split on purpose.
		# shellcheck disable=SC2086
		if is_in_space_sep_list "$_amberpi_disk" $1; then continue; fi
		# shellcheck disable=SC2086
		if [ -n "$2" ] && ! is_in_space_sep_list "$_amberpi_disk" $2; then continue; fi
		for _amberpi_sub in $(subdevices "$_amberpi_block"); do
			_amberpi_dev=$(sys2dev "$_amberpi_sub")
			# shellcheck disable=SC2086
			is_in_space_sep_list "$_amberpi_dev" $1 || echo "$_amberpi_dev"
		done
	done
}
