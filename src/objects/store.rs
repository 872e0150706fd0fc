//! The object store client: uploads (multipart for large objects, parts
//! taken from memory or a file without copying the whole), presigned URLs,
//! listings and deletes, all under the configured bucket and prefix.
//!
//! The client is the Arrow project's `object_store` crate, which signs
//! requests for every S3-compatible server (Amazon S3, R2, MinIO, ...).
//! Its own retries are kept short: [`super::offload`] retries a whole
//! upload with jobpipe's back-off, so an outage longer than one request's
//! retries is still bounded by `--object-store-retry`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::{Path, PathPart};
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, MultipartUpload, ObjectMeta,
    ObjectStore as _, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::config::ObjectStoreConfig;
use crate::error::ConfigError;

/// Size of one part of a multipart upload (S3 wants at least 5 MiB but
/// for the last). Objects up to this size go up in one request.
pub const PART_SIZE: usize = 8 << 20;
/// Parts on their way at once: bounds the memory a file upload holds.
const PARTS_IN_FLIGHT: usize = 2;

/// What an object is uploaded from.
#[derive(Clone)]
pub enum Source {
    /// Bytes already in memory (a handler's output line); parts are
    /// slices of them, never copies.
    Pieces(Vec<Bytes>),
    /// A file, read one part at a time.
    File(PathBuf),
    /// `len` bytes of a file from `offset` (a spilled output in its line).
    Range {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

/// An object that was stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The key under the store's prefix.
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store refused or could not be reached: worth retrying.
    #[error("{0}")]
    Store(#[from] object_store::Error),
    /// The file to upload cannot be read: retrying will not help.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The configured bucket and prefix, with a client for them.
pub struct Store {
    s3: AmazonS3,
    prefix: Vec<PathPart<'static>>,
    pub config: ObjectStoreConfig,
}

impl Store {
    /// Builds the client; nothing is sent until the first request.
    pub fn open(config: &ObjectStoreConfig) -> Result<Arc<Store>, ConfigError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(120)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            });
        if let Some(endpoint) = &config.endpoint {
            // Path-style requests: S3-compatible servers rarely have a
            // DNS name per bucket.
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        // Without keys, object_store looks for the instance's role.
        if let Some(c) = &config.credentials {
            builder = builder
                .with_access_key_id(&*c.access_key_id)
                .with_secret_access_key(&*c.secret_access_key);
            if let Some(token) = &c.session_token {
                builder = builder.with_token(&**token);
            }
        }
        let s3 = builder.build().map_err(|e| {
            ConfigError::Invalid(format!(
                "the object store {} cannot be used: {e}",
                config.url()
            ))
        })?;
        let prefix = config
            .prefix
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| PathPart::from(p.to_owned()))
            .collect();
        Ok(Arc::new(Store {
            s3,
            prefix,
            config: config.clone(),
        }))
    }

    /// The full path of `key` (parts under the prefix, each escaped).
    fn path(&self, key_parts: &[&str]) -> (Path, String) {
        let own: Vec<PathPart<'static>> = key_parts
            .iter()
            .map(|p| PathPart::from(p.to_string()))
            .collect();
        let key = Path::from_iter(own.clone()).to_string();
        (Path::from_iter(self.prefix.iter().cloned().chain(own)), key)
    }

    /// The full path of a key given relative to the prefix (as in a reference).
    pub fn path_of_key(&self, key: &str) -> Path {
        let own = Path::from(key);
        Path::from_iter(self.prefix.iter().cloned().chain(own.parts()))
    }

    /// Uploads `source` as the object `key_parts` (under the prefix).
    pub async fn put(
        &self,
        key_parts: &[&str],
        source: Source,
        content_type: &str,
    ) -> Result<Stored, UploadError> {
        let (path, key) = self.path(key_parts);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        let mut parts = Parts::open(source).await?;
        let first = parts.next().await?.unwrap_or_default();
        if first.iter().map(Bytes::len).sum::<usize>() < PART_SIZE {
            let hasher = hash(Sha256::new(), first.clone()).await;
            let size = first.iter().map(|b| b.len() as u64).sum::<u64>();
            let opts = PutOptions {
                attributes,
                ..Default::default()
            };
            let payload = PutPayload::from_iter(first);
            self.s3.put_opts(&path, payload, opts).await?;
            return Ok(stored(key, size, hasher));
        }
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let mut upload = self.s3.put_multipart_opts(&path, opts).await?;
        match send_parts(&mut *upload, first, parts).await {
            Ok((size, hasher)) => {
                upload.complete().await?;
                Ok(stored(key, size, hasher))
            }
            Err(e) => {
                // Parts already stored cost money until the upload is aborted.
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// A URL that lets anyone holding it GET the object for the
    /// configured time.
    pub async fn presigned_get(&self, key: &str) -> Result<String, object_store::Error> {
        let path = self.path_of_key(key);
        let url = self
            .s3
            .signed_url(reqwest::Method::GET, &path, self.config.presign_expiry)
            .await?;
        Ok(url.to_string())
    }

    /// A URL to PUT the object `key` (under the prefix).
    pub async fn presigned_put(&self, key: &str) -> Result<String, object_store::Error> {
        let path = self.path_of_key(key);
        let url = self
            .s3
            .signed_url(reqwest::Method::PUT, &path, self.config.presign_expiry)
            .await?;
        Ok(url.to_string())
    }

    /// Downloads the object `key` (under the prefix) into `sink`.
    pub async fn download(&self, key: &str, sink: &mut super::sink::Sink) -> Result<(), String> {
        let path = self.path_of_key(key);
        let got = self.s3.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                format!(
                    "no object {key:?} in the object store {}",
                    self.config.url()
                )
            }
            e => format!("cannot read {key:?} from the object store: {e}"),
        })?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| format!("reading {key:?} from the object store failed: {e}"))?;
            sink.write(&chunk).await?;
        }
        Ok(())
    }

    /// The object `key` (under the prefix) in memory, if it holds at most
    /// `max` bytes; none when it is larger.
    pub async fn get_small(&self, key: &str, max: u64) -> Result<Option<Bytes>, String> {
        let path = self.path_of_key(key);
        let got = self
            .s3
            .get(&path)
            .await
            .map_err(|e| format!("cannot read {key:?} from the object store: {e}"))?;
        if got.meta.size > max {
            return Ok(None);
        }
        got.bytes()
            .await
            .map(Some)
            .map_err(|e| format!("reading {key:?} from the object store failed: {e}"))
    }

    /// Deletes every object under the key prefix `key_parts`.
    pub async fn delete_under(&self, key_parts: &[&str]) -> Result<usize, object_store::Error> {
        let (path, _) = self.path(key_parts);
        let mut listed = self.s3.list(Some(&path));
        let mut deleted = 0;
        while let Some(meta) = listed.next().await {
            self.s3.delete(&meta?.location).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Up to `max` objects under the key prefix `key_parts` whose paths
    /// come after `after` (from the first when none), in the store's
    /// order: by key on S3, so the last one listed is where the next
    /// listing starts.
    pub async fn list_after(
        &self,
        key_parts: &[&str],
        after: Option<&Path>,
        max: usize,
    ) -> Result<Vec<ObjectMeta>, object_store::Error> {
        let (prefix, _) = self.path(key_parts);
        let listed = match after {
            Some(after) => self.s3.list_with_offset(Some(&prefix), after),
            None => self.s3.list(Some(&prefix)),
        };
        // Dropping the stream after `max` asks for no further page.
        listed.take(max).try_collect().await
    }

    /// Deletes the objects at `paths` (as listed), up to 1,000 a request;
    /// returns how many went.
    pub async fn delete_paths(&self, paths: Vec<Path>) -> Result<usize, object_store::Error> {
        let paths = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut deleted = self.s3.delete_stream(paths);
        let mut count = 0;
        while let Some(done) = deleted.next().await {
            done?;
            count += 1;
        }
        Ok(count)
    }
}

/// Sends the parts of a multipart upload, a few at a time; returns the
/// size and hash of what was sent.
async fn send_parts(
    upload: &mut dyn MultipartUpload,
    first: Vec<Bytes>,
    mut parts: Parts,
) -> Result<(u64, Sha256), UploadError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut next = Some(first);
    while let Some(part) = next.take() {
        size += part.iter().map(|b| b.len() as u64).sum::<u64>();
        hasher = hash(hasher, part.clone()).await;
        in_flight.push(upload.put_part(PutPayload::from_iter(part)));
        if in_flight.len() >= PARTS_IN_FLIGHT {
            in_flight.next().await.transpose()?;
        }
        next = parts.next().await?;
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok((size, hasher))
}

fn stored(key: String, size: u64, hasher: Sha256) -> Stored {
    let digest = hasher.finalize();
    Stored {
        key,
        size,
        sha256: crate::text::hex(&digest),
    }
}

/// Hashes a part off the runtime's threads (a part is megabytes).
async fn hash(mut hasher: Sha256, part: Vec<Bytes>) -> Sha256 {
    tokio::task::spawn_blocking(move || {
        for piece in &part {
            hasher.update(piece);
        }
        hasher
    })
    .await
    .expect("hashing does not panic")
}

/// Opens a file to upload, at `offset`.
async fn open_at(path: &std::path::Path, offset: u64) -> Result<tokio::fs::File, UploadError> {
    use tokio::io::AsyncSeekExt;
    let read = |source| UploadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read)?;
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(read)?;
    }
    Ok(file)
}

/// Cuts a source into parts of [`PART_SIZE`] bytes (the last may be shorter).
enum Parts {
    Pieces {
        pieces: Vec<Bytes>,
        at: usize,
        offset: usize,
    },
    File {
        file: tokio::fs::File,
        path: PathBuf,
        /// Bytes left to read.
        left: u64,
    },
}

impl Parts {
    async fn open(source: Source) -> Result<Parts, UploadError> {
        Ok(match source {
            Source::Pieces(pieces) => Parts::Pieces {
                pieces,
                at: 0,
                offset: 0,
            },
            Source::File(path) => Parts::File {
                file: open_at(&path, 0).await?,
                path,
                left: u64::MAX,
            },
            Source::Range { path, offset, len } => Parts::File {
                file: open_at(&path, offset).await?,
                path,
                left: len,
            },
        })
    }

    /// The next part; `None` after the last.
    async fn next(&mut self) -> Result<Option<Vec<Bytes>>, UploadError> {
        match self {
            Parts::Pieces { pieces, at, offset } => {
                let mut part = Vec::new();
                let mut len = 0;
                while len < PART_SIZE && *at < pieces.len() {
                    let piece = &pieces[*at];
                    let take = (piece.len() - *offset).min(PART_SIZE - len);
                    part.push(piece.slice(*offset..*offset + take));
                    len += take;
                    *offset += take;
                    if *offset == piece.len() {
                        *at += 1;
                        *offset = 0;
                    }
                }
                Ok((!part.is_empty()).then_some(part))
            }
            Parts::File { file, path, left } => {
                let mut buf = Vec::with_capacity(PART_SIZE);
                while buf.len() < PART_SIZE && *left > 0 {
                    let read = (&mut *file)
                        .take(((PART_SIZE - buf.len()) as u64).min(*left))
                        .read_to_end(&mut buf)
                        .await
                        .map_err(|source| UploadError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    if read == 0 {
                        break;
                    }
                    *left -= read as u64;
                }
                Ok((!buf.is_empty()).then(|| vec![Bytes::from(buf)]))
            }
        }
    }
}
