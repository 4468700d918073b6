# Sourced by scripts/vm/init (busybox sh) after the tgt phase, as
# /lib/vm-changer.sh: tapir's SCSI changer commands against tgt's media
# changer emulation, whose drive is the tgt tape LUN, so that MOVE MEDIUM
# really changes the cartridge image the tape drive reads and writes.
# Uses init's say, fail, skipped, verbose and tgt_device; failures are named
# changer-*. Skipped with tapir.skip=changer.
# shellcheck shell=sh
# shellcheck disable=SC3043,SC2154,SC2086 # busybox ash has local; init sets
# verbose, which is empty or one word.
#
# Library: one robot (element 1), six slots (1000-1005) with VM0001L9,
# VM0002L9, VM0003L9 and a cleaning cartridge CLN001L1 in slots 1-4, two mail
# slots (10-11), one drive (500) = tid 1, lun 1.
changer_phase() {
    local vtl=/tmp/vtl sg="" d i n start out
    start="$(uptime_s)"
    mkdir -p $vtl
    for b in VM0001L9 VM0002L9 VM0003L9; do
        tgtimg --op new --device-type tape --barcode $b --size 32 --type data --file $vtl/$b >/dev/null ||
            { fail "changer-tgtimg-$b"; return; }
    done
    tgtimg --op new --device-type tape --barcode CLN001L1 --size 1 --type clean --file $vtl/CLN001L1 >/dev/null ||
        { fail "changer-tgtimg-CLN001L1"; return; }
    dd if=/dev/zero of=$vtl/smc bs=1k count=1 2>/dev/null
    lu() { tgtadm --lld iscsi --mode logicalunit --op update --tid 1 --lun 2 --params "$1"; }
    if ! tgtadm --lld iscsi --mode logicalunit --op new --tid 1 --lun 2 \
        --device-type changer --bstype smc --backing-store $vtl/smc ||
        ! lu media_home=$vtl ||
        ! lu element_type=1,start_address=1,quantity=1 ||
        ! lu element_type=2,start_address=1000,quantity=6 ||
        ! lu element_type=3,start_address=10,quantity=2 ||
        ! lu element_type=4,start_address=500,quantity=1 ||
        ! lu element_type=4,address=500,tid=1,lun=1; then
        fail "changer-tgt-setup"; return
    fi
    i=0
    for b in VM0001L9 VM0002L9 VM0003L9 CLN001L1; do
        lu element_type=2,address=$((1000 + i)),barcode=$b,sides=1 || { fail "changer-tgt-slot-$b"; return; }
        i=$((i + 1))
    done
    # The initiator learns of the new LUN by a rescan; its sg node is the
    # one of SCSI type 8 (medium changer).
    for h in /sys/class/scsi_host/host*/scan; do echo "- - -" > "$h"; done
    i=0
    while [ -z "$sg" ] && [ $i -lt 200 ]; do
        for d in /sys/class/scsi_generic/sg*; do
            [ "$(cat "$d/device/type" 2>/dev/null)" = 8 ] && [ -e "/dev/${d##*/}" ] && sg="/dev/${d##*/}"
        done
        [ -n "$sg" ] || { i=$((i + 1)); sleep 0.05; }
    done
    [ -n "$sg" ] || { fail "changer-no-sg-node"; ls /sys/class/scsi_generic; return; }
    say "changer at $sg after $(echo "$(uptime_s) $start" | awk '{printf "%.1f", $1 - $2}') s"

    # tapir with the changer; the JSON made one line, cut at a section
    # ("drives", "slots", "mail_slots") to check what it holds.
    c() { timeout 120 /bin/tapir $verbose --device "$tgt_device" "$@"; }
    j() { c changer --changer "$sg" "$@" --json | tr -d ' \n'; }
    section() { printf '%s' "$1" | sed "s/.*\"$2\":\[//; s/\].*//"; }
    has() { case "$(section "$1" "$2")" in *"$3"*) return 0 ;; esac; return 1; }
    # Element n (1-based) of a section.
    nth() { section "$1" "$2" | sed 's/},{"type"/}|{"type"/g' | tr '|' '\n' | sed -n "${3}p"; }

    out="$(j inventory)" || { fail "changer-inventory"; return; }
    echo "$out" | head -c 600; echo
    has "$out" slots '"barcode":"VM0002L9"' || fail "changer-inventory-barcodes"
    has "$out" slots '"medium_type":"cleaning"' || has "$out" slots '"barcode":"CLN001L1"' ||
        fail "changer-inventory-cleaning"
    # tgt sends each report 8 bytes short: the (last) drive's identifier is
    # cut, so tapir shows no serial rather than a wrong one.
    has "$out" drives '"address":500' || fail "changer-inventory-drive"
    has "$out" transports '"address":1' || fail "changer-inventory-transport"
    case "$(nth "$out" slots 6)" in *'"address":1005,"full":false'*) ;; *) fail "changer-inventory-slot-6" ;; esac
    has "$out" drives '"full":false' || fail "changer-inventory-drive-not-empty"

    out="$(j load VM0002L9)" || { fail "changer-load"; return; }
    has "$out" drives '"barcode":"VM0002L9"' || fail "changer-load-drive"
    case "$(nth "$out" slots 2)" in *'"full":false'*) ;; *) fail "changer-load-slot-2-not-empty" ;; esac
    out="$(j unload)" || fail "changer-unload"
    case "$(nth "$out" slots 2)" in *'"barcode":"VM0002L9"'*) ;; *) fail "changer-unload-slot-2" ;; esac
    has "$out" drives '"full":false' || fail "changer-unload-drive-not-empty"

    out="$(j transfer 1 5)" || fail "changer-transfer"
    case "$(nth "$out" slots 5)" in *'"barcode":"VM0001L9"'*) ;; *) fail "changer-transfer-slot-5" ;; esac
    # A move into a full slot: refused with the changer's named condition.
    out="$(c changer --changer "$sg" transfer 2 5 2>&1)" && fail "changer-transfer-into-full-slot-accepted"
    case "$out" in
        *"medium destination element full"*) say "changer: a move into a full slot: ${out#tapir: error: }" ;;
        *) echo "$out"; fail "changer-full-slot-unnamed" ;;
    esac

    out="$(j export VM0003L9)" || fail "changer-export"
    has "$out" mail_slots '"barcode":"VM0003L9"' || fail "changer-export-mail-slot"
    out="$(j import VM0003L9)" || fail "changer-import"
    has "$out" mail_slots '"full":true' && fail "changer-import-mail-slot-still-full"
    has "$out" slots '"barcode":"VM0003L9"' || fail "changer-import-slot"

    # Every blank cartridge labelled with its barcode, the cleaning one
    # passed over; then the drive must read what MOVE MEDIUM put in it.
    out="$(c label --barcodes --changer "$sg" --pool vm --json | tr -d ' \n')" || { fail "changer-label-barcodes"; return; }
    n="$(printf '%s' "$out" | grep -o '"labelled":{' | wc -l)"
    [ "$n" = 3 ] || { echo "$out"; fail "changer-label-barcodes-labelled-$n-not-3"; }
    say "changer: label --barcodes labelled $n cartridges"
    case "$out" in *'"barcode":"CLN001L1","skipped":"acleaningcartridge"'*) ;; *) fail "changer-label-barcodes-cleaning" ;; esac
    out="$(c label --barcodes --changer "$sg" --pool vm 2>&1)" || fail "changer-label-barcodes-again"
    n="$(printf '%s\n' "$out" | grep -c 'skipped: already labelled')"
    [ "$n" = 3 ] || { echo "$out"; fail "changer-label-barcodes-not-idempotent"; }
    for b in VM0001L9 VM0003L9; do
        j load $b >/dev/null || { fail "changer-load-$b"; continue; }
        out="$(c list --json 2>&1 | tr -d ' \n')"
        case "$out" in
            *"\"label\":\"$b\""*) say "changer: after MOVE MEDIUM the drive reads $b" ;;
            *) echo "$out" | head -c 400; fail "changer-drive-reads-wrong-cartridge-for-$b" ;;
        esac
        j unload >/dev/null || fail "changer-unload-$b"
    done
    # A scheduled job through the SCSI changer and the st drive: tapir run
    # takes an empty cartridge of the pool, loads it, writes, verifies it
    # and exports it through the mail slot.
    mkdir -p /tmp/runsrc && echo "nightly data" > /tmp/runsrc/f
    printf '%s\n' '[changer.lib]' "device = \"$sg\"" '[drive.tape]' "device = \"$tgt_device\"" \
        'changer = "lib"' '[pool.vm]' 'retention = "7d"' '[job.nightly]' 'sources = ["/tmp/runsrc"]' \
        'pool = "vm"' 'verify = true' 'export = "vault:offsite"' > /tmp/tapir.toml
    out="$(timeout 300 /bin/tapir $verbose --config /tmp/tapir.toml --catalog /tmp/run.db --json \
        run nightly --now 2026-12-01T01:00:00Z --insert-timeout 0 | tr -d ' \n')" ||
        { echo "$out" | head -c 800; fail "changer-run"; }
    case "$out" in
        *'"cartridge":"VM0001L9"'*'"verified":[{"cartridge":"VM0001L9","ok":true'*'"exported":["VM0001L9tovault:offsite"]'*)
            say "changer: tapir run wrote, verified and exported VM0001L9 through the SCSI changer" ;;
        *) echo "$out" | head -c 800; fail "changer-run-result" ;;
    esac
    out="$(j inventory)" || fail "changer-inventory-after-run"
    has "$out" mail_slots '"barcode":"VM0001L9"' || fail "changer-run-not-in-mail-slot"
    say "changer phase done in $(echo "$(uptime_s) $start" | awk '{printf "%.1f", $1 - $2}') s"
}
if [ -n "$tgt_device" ] && [ -x /bin/tapir ] && ! skipped changer; then
    changer_phase
fi
