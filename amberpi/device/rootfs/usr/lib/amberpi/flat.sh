#!/bin/sh
# Shipped by amberpi: queries on yaml-flat.awk's output (PATH<TAB>VALUE lines,
# see there). Sourced, never run:
#
#   # shellcheck source=../lib/amberpi/flat.sh
#   . "${0%/*}/../lib/amberpi/flat.sh"
#   awk -f /usr/lib/amberpi/yaml-flat.awk user-data > "$flat" || exit 1
#   host=$(flat_get "$flat" hostname) || host=
#
# Paths are matched as literal strings, and are handed to awk through the
# environment: awk -v would read backslashes in an SSID as escapes. A value
# is printed with a newline after it; $(...) drops that and any of its own.

# Undoes yaml-flat.awk's escapes: \\ \n \t in values, %25 %2F %09 %0A in keys.
# Done in awk, not printf %b, which would also read other backslashes.
_flat_awk='
function flat_value(s,   r, i, c) {
	r = ""
	while ((i = index(s, "\\")) > 0) {
		c = substr(s, i + 1, 1)
		if (c == "n") c = "\n"
		else if (c == "t") c = "\t"
		r = r substr(s, 1, i - 1) c
		s = substr(s, i + 2)
	}
	return r s
}
function flat_name(s,   r, i, c) {
	r = ""
	while ((i = index(s, "%")) > 0) {
		c = substr(s, i + 1, 2)
		if (c == "25") c = "%"
		else if (c == "2F" || c == "2f") c = "/"
		else if (c == "09") c = "\t"
		else if (c == "0A" || c == "0a") c = "\n"
		else c = "%" c
		r = r substr(s, 1, i - 1) c
		s = substr(s, i + 3)
	}
	return r s
}
'

flat_get() {
	# The value at PATH $2 in FLAT $1; a duplicate key's last line wins, as in
	# PyYAML (cloud-init). Status 1, and nothing printed, when there is none.
	_FLAT_PATH="$2" awk "$_flat_awk"'
		BEGIN { p = ENVIRON["_FLAT_PATH"]; found = 0 }
		{
			i = index($0, "\t")
			if (i && substr($0, 1, i - 1) == p) {
				v = substr($0, i + 1)
				found = 1
			}
		}
		END {
			if (!found) exit 1
			print flat_value(v)
		}
	' "$1"
}

flat_has() {
	# Whether PATH $2 is in FLAT $1, as a leaf or above one (PATH/...); the
	# empty PATH is the top level, there when anything is.
	_FLAT_PATH="$2" awk '
		BEGIN { p = ENVIRON["_FLAT_PATH"]; pre = p "/"; n = length(pre); found = 0 }
		{
			i = index($0, "\t")
			if (!i) next
			k = substr($0, 1, i - 1)
			if (p == "" || k == p || substr(k, 1, n) == pre) {
				found = 1
				exit
			}
		}
		END { exit !found }
	' "$1"
}

flat_children() {
	# The names of the direct children of PATH $2 in FLAT $1 (the top level
	# when empty), keys decoded, indexes as they are: one a line, each once,
	# in order of appearance.
	_FLAT_PATH="$2" awk "$_flat_awk"'
		BEGIN { p = ENVIRON["_FLAT_PATH"]; pre = (p == "") ? "" : p "/"; n = length(pre) }
		{
			i = index($0, "\t")
			if (!i) next
			k = substr($0, 1, i - 1)
			if (substr(k, 1, n) != pre || length(k) == n) next
			k = substr(k, n + 1)
			j = index(k, "/")
			if (j) k = substr(k, 1, j - 1)
			if (!(k in seen)) {
				seen[k] = 1
				print flat_name(k)
			}
		}
	' "$1"
}

flat_key() {
	# NAME $1 as a PATH component (an SSID with / or % in it, say).
	_FLAT_NAME="$1" awk '
		function replace(s, from, to,   r, i) {
			r = ""
			while ((i = index(s, from)) > 0) {
				r = r substr(s, 1, i - 1) to
				s = substr(s, i + length(from))
			}
			return r s
		}
		BEGIN {
			k = replace(ENVIRON["_FLAT_NAME"], "%", "%25")
			print replace(replace(replace(k, "/", "%2F"), "\t", "%09"), "\n", "%0A")
		}
	'
}
