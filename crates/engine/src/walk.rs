//! Finding the audio files under the paths a user names.

use std::path::{Path, PathBuf};

/// Every file under `path` (itself if it is a file) whose extension is a supported audio
/// format, or that was named directly. Symbolic links to folders are not followed, so a
/// link cycle cannot make the walk endless.
pub fn collect_audio_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let p = entry.path();
            if kind.is_dir() {
                stack.push(p);
            } else if (kind.is_file() || kind.is_symlink())
                && audio::is_supported_extension(&p)
                && p.is_file()
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
