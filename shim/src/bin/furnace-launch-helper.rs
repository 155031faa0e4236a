//! `furnace-launch-helper`: carries out one libcontainer operation for the
//! shim and exits (furnace_runtime::launcher::protocol). Installed next to
//! `containerd-shim-furnace-v1`, which finds it there.

fn main() {
    furnace_runtime::launcher::helper::main()
}
