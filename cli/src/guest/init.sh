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

echo "FURNACE-KALLSYMS $(grep -E ' (init_task|linux_banner)$' /proc/kallsyms | tr '\n' ' ')"
print_modules boot
print_ps boot
# Open the control port before saying ready and keep it open: a serial port
# drops what arrives while nobody has it open.
exec 3< /dev/ttyS1
stty -F /dev/ttyS1 -echo 2>/dev/null
echo FURNACE-READY

while read -r command argument <&3; do
    case "$command" in
        ps) print_ps "$argument" ;;
        modules) print_modules "$argument" ;;
        kallsyms) echo "FURNACE-KALLSYMS $(grep -E " $argument\$" /proc/kallsyms)" ;;
        "") ;;
        *) echo "FURNACE-ERROR unknown command $command" ;;
    esac
done
echo "FURNACE-ERROR the control port closed"
