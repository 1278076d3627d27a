//! The `kmsfs` binary: parse arguments and hand over to `kmsfs::cli`.

/// Wipes small freed blocks, so key copies in buffers we do not own do not linger.
#[global_allocator]
static ALLOCATOR: kmsfs::alloc::WipeOnFree = kmsfs::alloc::WipeOnFree;

fn main() {
    std::process::exit(kmsfs::cli::main());
}
