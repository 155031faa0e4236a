#!/bin/sh
# Furnace test-guest workload (runs as PID 1 from the initramfs).
#
# It gives tests ground truth to compare VMI against: named processes, a file
# held open at a known path, loaded modules, and the guest's own view of all
# of it printed to the console (ttyS0) between FURNACE-* marker lines. Tests
# ask for a fresh view through the control port (ttyS1). Nothing here loops
# on a timer, so the process table only changes when a test asks it to.

/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
echo 0 > /proc/sys/kernel/kptr_restrict

for module in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$module.ko" || echo "FURNACE-WARN insmod $module failed"
done

# Workers block forever on a FIFO nobody writes, holding the known file open.
mkfifo /run/never
fworker-alpha &
fworker-beta &
su -s /bin/sh -c 'exec fworker-gamma' tenant &

print_ps() {
    echo "FURNACE-PS-BEGIN $1"
    ps -o pid,ppid,user,comm > /run/ps.out &
    self=$!
    wait $self
    cat /run/ps.out
    echo "FURNACE-PS-SELF $self"
    echo "FURNACE-PS-END $1"
}

print_modules() {
    echo "FURNACE-MODULES-BEGIN $1"
    while read -r name size rest; do echo "$name $size"; done < /proc/modules
    echo "FURNACE-MODULES-END $1"
}

# Event ground truth. Each prints a block the test matches by its nonce.
open_file() {  # nonce path: a fresh process (cat) opens path
    echo "FURNACE-OPEN-BEGIN $1"
    echo furnace > "$2"
    cat "$2" > /dev/null &
    pid=$!
    wait $pid
    echo "opened $pid cat $2 at $(date +%s)"
    echo "FURNACE-OPEN-END $1"
}

run_sleep() {  # nonce seconds: a sleep process, from exec to exit
    echo "FURNACE-SLEEP-BEGIN $1"
    sleep "$2" &
    pid=$!
    echo "started $pid"
    wait $pid
    echo "exited $pid $?"
    echo "FURNACE-SLEEP-END $1"
}

# A shell that renames itself (comm "fburst" or "floop") and opens a file
# count times with no other process involved: `:` is a builtin, so each
# round is one openat by that shell. It prints how long that took by the
# guest's clock (/proc/uptime: busybox date has no nanoseconds).
OPEN_LOOP='printf "$1" > /proc/self/comm
centiseconds() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
begin=$(centiseconds)
i=0; while [ $i -lt "$2" ]; do : < "$3"; i=$((i + 1)); done
echo "elapsed_ns $(( ($(centiseconds) - begin) * 10000000 ))"'

open_loop() {  # marker nonce name count path
    echo "FURNACE-$1-BEGIN $2"
    : > "$5"
    sh -c "$OPEN_LOOP" open-loop "$3" "$4" "$5" > /run/loop.out &
    pid=$!
    wait $pid
    echo "pid $pid count $4"
    cat /run/loop.out
    echo "FURNACE-$1-END $2"
}

echo "FURNACE-KALLSYMS $(grep -E ' (init_task|linux_banner)$' /proc/kallsyms | tr '\n' ' ')"
print_modules boot
print_ps boot
# Open the control port before saying ready and keep it open: a serial port
# drops what arrives while nobody has it open.
exec 3< /dev/ttyS1
stty -F /dev/ttyS1 -echo 2>/dev/null
echo FURNACE-READY

while read -r command argument first second <&3; do
    case "$command" in
        ps) print_ps "$argument" ;;
        modules) print_modules "$argument" ;;
        open) open_file "$argument" "$first" ;;
        sleep) run_sleep "$argument" "$first" ;;
        burst) open_loop BURST "$argument" fburst "$first" "$second" ;;
        loop) open_loop LOOP "$argument" floop "$first" /dev/null ;;
        kallsyms) echo "FURNACE-KALLSYMS $(grep -E " $argument\$" /proc/kallsyms)" ;;
        "") ;;
        *) echo "FURNACE-ERROR unknown command $command" ;;
    esac
done
echo "FURNACE-ERROR the control port closed"
