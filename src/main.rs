//! The `kmsfs` binary: parse arguments and hand over to `kmsfs::cli`.

/// Wipes every freed block, so key and plaintext copies in buffers do not linger.
#[global_allocator]
static ALLOCATOR: kmsfs::alloc::WipeOnFree = kmsfs::alloc::WipeOnFree(std::alloc::System);

fn main() {
    std::process::exit(kmsfs::cli::main());
}
