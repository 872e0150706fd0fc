//! A job's scratch directory: made before the handler sees the job (its
//! path goes into the job line as `job_dir`, and into a one-shot handler's
//! environment as `JOBPIPE_JOB_DIR`), the only place from which a
//! handler's `output_file` is uploaded, and removed after the job.
//!
//! Confining uploads to this directory keeps a handler's answer from
//! publishing any file jobpipe can read (`/etc/shadow`, a key): a path is
//! resolved, symbolic links and `..` included, before it is checked.

use std::path::{Path, PathBuf};

/// Makes the directory for one job under `root`: the job id with unsafe
/// characters replaced, and a random suffix, so two runs of one id never
/// share a directory.
pub fn create(root: &Path, job_id: &str) -> std::io::Result<PathBuf> {
    let safe: String = job_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let dir = root.join(format!("{safe}.{}", &suffix[..12]));
    std::fs::create_dir_all(root)?;
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Removes a job's directory and everything in it; a failure is logged.
pub fn remove(dir: &Path, job_id: &str) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(
                job_id,
                "cannot remove the job's directory {}: {e}",
                dir.display()
            );
        }
    }
}

/// Resolves a file a handler named (absolute, or relative to the job's
/// directory) and checks that it is a regular file inside `dir`.
pub fn resolve(dir: &Path, given: &str) -> Result<PathBuf, String> {
    let joined = dir.join(given);
    let real_dir = dir
        .canonicalize()
        .map_err(|e| format!("the job's directory {} is gone: {e}", dir.display()))?;
    let real = joined
        .canonicalize()
        .map_err(|e| format!("the output file {given:?} cannot be opened: {e}"))?;
    if !real.starts_with(&real_dir) {
        return Err(format!(
            "the output file {given:?} is outside the job's directory {} (the job's \"job_dir\", JOBPIPE_JOB_DIR in one-shot mode); only files written there are uploaded",
            dir.display()
        ));
    }
    if !real.is_file() {
        return Err(format!("the output file {given:?} is not a regular file"));
    }
    Ok(real)
}

/// The content type of an uploaded file, from its extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("json") => "application/json",
        Some("txt" | "log") => "text/plain",
        Some("csv") => "text/csv",
        Some("html") => "text/html",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("ogg") => "audio/ogg",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_directory_resolve() {
        let root = tempfile::tempdir().unwrap();
        let dir = create(root.path(), "job/../1 x").unwrap();
        assert!(dir.starts_with(root.path()));
        assert!(dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("job____1_x."));
        std::fs::write(dir.join("out.png"), b"png").unwrap();
        std::fs::write(root.path().join("secret"), b"no").unwrap();
        assert!(resolve(&dir, "out.png").is_ok());
        let absolute = dir.join("out.png").display().to_string();
        assert!(resolve(&dir, &absolute).is_ok());
        let err = resolve(&dir, "../secret").unwrap_err();
        assert!(err.contains("outside the job's directory"), "{err}");
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("link")).unwrap();
        let err = resolve(&dir, "link").unwrap_err();
        assert!(err.contains("outside the job's directory"), "{err}");
        let err = resolve(&dir, "missing").unwrap_err();
        assert!(err.contains("cannot be opened"), "{err}");
        remove(&dir, "job");
        assert!(!dir.exists());
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("a.MP4"), "video/mp4");
        assert_eq!(content_type("weights"), "application/octet-stream");
    }
}
