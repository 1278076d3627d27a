//! The `kmsfs` binary: parse arguments and hand over to `kmsfs::cli`.

fn main() {
    std::process::exit(kmsfs::cli::main());
}
