//! Writes the seed inputs of the `read_store` fuzz target into a folder, one file each:
//! `cargo run -p fuzzing --example write_seeds -- fuzz/corpus/read_store`.

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: write_seeds FOLDER");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    for (i, seed) in fuzzing::store_seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
    }
    Ok(())
}
