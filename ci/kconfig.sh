# shellcheck shell=bash
# Sourced by ci/kernel.sh and ci/kselftest.sh: configure a kernel tree's
# object directory as tinyconfig plus config fragments, once per change of
# the fragments or of the tree's Makefile (a stamp in the object dir).
#
#   kconfig_apply TREE OBJ FRAGMENT...
#
# A fragment line that did not survive olddefconfig is a typo or an unmet
# dependency: it fails the build rather than boot a kernel without it.
# The fragments' settings as merge_config.sh applies them: for each
# symbol, the line of the last fragment that sets it.
effective_lines() {
	awk '/^CONFIG_[A-Za-z0-9_]+=/ { sym = $0; sub(/=.*/, "", sym) }
	     /^# CONFIG_[A-Za-z0-9_]+ is not set/ { sym = $2 }
	     sym != "" { if (!(sym in line)) order[n++] = sym; line[sym] = $0; sym = "" }
	     END { for (i = 0; i < n; i++) print line[order[i]] }' "$@"
}

kconfig_apply() {
	local tree=$1 obj=$2
	shift 2
	local stamp
	stamp=$(cat "$@" "$tree/Makefile" | sha256sum | cut -d' ' -f1)
	[ -f "$obj/.config" ] && [ "$(cat "$obj/.aem-config-stamp" 2>/dev/null)" = "$stamp" ] && return 0
	echo "kconfig: configuring ${obj##*/}: tinyconfig + ${*##*/}"
	mkdir -p "$obj"
	make -s -C "$tree" O="$obj" tinyconfig >/dev/null
	(cd "$tree" && scripts/kconfig/merge_config.sh -m -O "$obj" "$obj/.config" "$@" >/dev/null)
	make -s -C "$tree" O="$obj" olddefconfig >/dev/null
	local bad=0 line sym
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*) grep -qxF "$line" "$obj/.config" || { echo "kconfig: not in final .config: $line" >&2; bad=1; } ;;
		"# CONFIG_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			grep -q "^$sym=" "$obj/.config" && { echo "kconfig: not unset: $line" >&2; bad=1; } ;;
		esac
	done < <(effective_lines "$@")
	[ $bad -eq 0 ] || { echo "kconfig: config fragments not applied to $obj" >&2; return 1; }
	echo "$stamp" >"$obj/.aem-config-stamp"
}
