# shellcheck shell=bash disable=SC2034
# Shared settings for the VM test scripts; sourced, not run.
# Everything downloaded lives under the cache directory, never in the checkout.

VM_CACHE="${TAPIR_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tapir/vm}"
VM_APT="$VM_CACHE/apt"
VM_DEBS="$VM_CACHE/debs"
VM_KERNELS="$VM_CACHE/kernels"
# Debian suite that carries kernels with scsi_debug's tape emulation (>= 6.16).
VM_SUITE="${TAPIR_VM_SUITE:-trixie-backports}"
VM_MIRROR="${TAPIR_VM_MIRROR:-http://deb.debian.org/debian}"
# Oldest kernel whose scsi_debug emulates a tape (ptype=1).
VM_MIN_KERNEL="6.16"

vm_log() { printf 'vm: %s\n' "$*" >&2; }
vm_die() { printf 'vm: error: %s\n' "$*" >&2; exit 1; }

# apt-get/apt-cache with a private configuration: own sources list, state
# and cache under $VM_APT; the system's sources are never read or changed.
vm_apt_setup() {
    mkdir -p "$VM_APT"/etc/apt.conf.d "$VM_APT"/etc/preferences.d \
        "$VM_APT"/etc/sources.list.d "$VM_APT"/state/lists/partial \
        "$VM_APT"/cache/archives/partial
    touch "$VM_APT/state/status"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$keyring" ] || vm_die "$keyring is missing (install debian-archive-keyring)"
    printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$VM_MIRROR" "$VM_SUITE" \
        > "$VM_APT/etc/sources.list"
    cat > "$VM_APT/apt.conf" <<CONF
Dir::Etc "$VM_APT/etc";
Dir::Etc::main "$VM_APT/etc/apt.conf.d/none";
Dir::Etc::Parts "$VM_APT/etc/apt.conf.d";
Dir::Etc::SourceList "$VM_APT/etc/sources.list";
Dir::Etc::SourceParts "$VM_APT/etc/sources.list.d";
Dir::Etc::Preferences "$VM_APT/etc/preferences";
Dir::Etc::PreferencesParts "$VM_APT/etc/preferences.d";
Dir::State "$VM_APT/state";
Dir::State::status "$VM_APT/state/status";
Dir::Cache "$VM_APT/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
APT::Sandbox::User "root";
CONF
}

vm_apt_get() { APT_CONFIG="$VM_APT/apt.conf" apt-get -q "$@"; }
vm_apt_cache() { APT_CONFIG="$VM_APT/apt.conf" apt-cache "$@"; }

# Print the content of a kernel module (.ko, .ko.xz, .ko.zst, .ko.gz) to stdout.
vm_module_cat() {
    case "$1" in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -qdc "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *.ko) cat "$1" ;;
        *) vm_die "not a kernel module: $1" ;;
    esac
}
