//! Compiles the wishlist contract with protox (pure Rust, so no `protoc`) and
//! generates its Rust messages and tonic service, as Weft's own proto/build.rs
//! does for Weft's contracts.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = root.join("proto");
    // Weft's contracts, for the types this one imports (weft.money.v1.Money).
    let weft = root.join("../../proto");
    let mut files = Vec::new();
    collect_protos(&own.join("wishlist"), &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [own, weft])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // For reflection and for clients' retry tables (the idempotency levels).
    std::fs::write(out_dir.join("wishlist_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Weft's types are weft-proto's, not generated again here.
        .extern_path(".weft.money.v1", "::weft_proto::money::v1")
        .compile_fds(fds)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
