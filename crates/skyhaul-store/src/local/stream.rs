//! Streamed reads and writes of whole files, so that an object copied from or to a file
//! system is never held in memory whole.

use super::LocalStore;
use super::{blocking, file_name, leftovers, random_id, set_mtime, Dirs};
use crate::{short_body, Chunks, ObjectMeta, PutOptions, Result, Streamed};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes per read, and gathered per write: large enough that the blocking pool's hand-offs
/// cost little, small enough that a stream holds little.
pub const CHUNK: usize = 256 << 10;

/// The file as chunks. It is looked at again before its last chunk is given out (and, if it
/// was written just before, read again: [`super::Version`]), so a file changed during the read ends
/// the stream with [`ErrorKind::SourceChanged`] instead of its last bytes.
pub(super) async fn get_stream(
    store: &LocalStore,
    key: &str,
    expect: Option<&ObjectMeta>,
) -> Result<Streamed> {
    let path = store.path_of(key)?;
    let (this, k, expect) = (store.clone(), key.to_string(), expect.cloned());
    let (file, version) = blocking(move || this.open_version(&k, &path, expect.as_ref())).await?;
    let (file, version) = (Arc::new(file), Arc::new(version));
    let size = version.metadata().len();
    let (this, key) = (store.clone(), key.to_string());
    // Chunks are split off one buffer, whose memory is used again once the chunks given out
    // are dropped (as soon as they are sent or hashed): a fresh allocation per chunk cost
    // more in page faults than the read itself.
    let state = Some((0u64, BytesMut::new(), version.hasher()));
    let body = futures::stream::unfold(state, move |state| {
        let (file, version) = (file.clone(), version.clone());
        let (this, key) = (this.clone(), key.clone());
        async move {
            // One read even of an empty file, for the look after it.
            let (offset, mut buf, mut hasher) = state?;
            let len = (size - offset).min(CHUNK as u64) as usize;
            buf.reserve(len);
            let read = blocking(move || {
                buf.resize(len, 0);
                this.read_at(&key, &file, &mut buf, offset)?;
                if let Some(hasher) = &mut hasher {
                    hasher.update(&buf);
                }
                if offset + len as u64 == size {
                    this.unchanged(&key, &file, &version, hasher.take())?;
                }
                Ok((buf, hasher))
            })
            .await;
            let end = offset + len as u64;
            match read {
                Ok((buf, _)) if buf.is_empty() => None,
                Ok((mut buf, hasher)) => {
                    let chunk = buf.split().freeze();
                    Some((Ok(chunk), (end < size).then_some((end, buf, hasher))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    Ok(Streamed {
        body: body.boxed(),
        etag: None,
        opaque_etag: false,
        headers: Default::default(),
        metadata: Default::default(),
        checksum: None,
    })
}

/// Writes the body into a hidden temporary file beside the target, renamed into place only
/// once every byte is written; a body that fails, falls short or runs long (or a write
/// dropped half way, as on Ctrl-C) leaves nothing behind.
pub(super) async fn put_stream(
    store: &LocalStore,
    key: &str,
    mut body: Chunks,
    opts: &PutOptions,
) -> Result<()> {
    let path = store.path_of(key)?;
    let at = store.tmp_path(key, &random_id())?;
    let (this, k, target) = (store.clone(), key.to_string(), path.clone());
    let (tmp, file) = blocking(move || {
        let dirs = this
            .dirs(&target, true)
            .map_err(|e| this.io_err(&k, "cannot write", e))?;
        let file = dirs
            .refuse_special(file_name(&target))
            .and_then(|()| dirs.create_new(file_name(&at)))
            .map_err(|e| this.io_err(&k, "cannot write", e))?;
        leftovers::hold(&file);
        Ok((Tmp(Some((dirs, at))), Arc::new(file)))
    })
    .await?;
    let size = opts.size;
    let mut written = 0u64;
    let mut gathered: Vec<Bytes> = Vec::new();
    let mut gathered_len = 0usize;
    loop {
        let next = body.next().await.transpose()?;
        let end = next.is_none();
        if let Some(chunk) = next {
            if written + (gathered_len + chunk.len()) as u64 > size {
                let got = written + (gathered_len + chunk.len()) as u64;
                return Err(short_body(&store.name, key, got, size));
            }
            gathered_len += chunk.len();
            gathered.push(chunk);
        }
        if gathered_len >= CHUNK || (end && gathered_len > 0) {
            let (this, k, file) = (store.clone(), key.to_string(), file.clone());
            let pieces = std::mem::take(&mut gathered);
            let at = written;
            blocking(move || {
                let mut offset = at;
                for piece in pieces {
                    file.write_all_at(&piece, offset)
                        .map_err(|e| this.io_err(&k, "cannot write", e))?;
                    offset += piece.len() as u64;
                }
                Ok(())
            })
            .await?;
            written += gathered_len as u64;
            gathered_len = 0;
        }
        if end {
            break;
        }
    }
    if written != size {
        return Err(short_body(&store.name, key, written, size));
    }
    let (this, k, mtime) = (store.clone(), key.to_string(), opts.mtime);
    blocking(move || {
        let (dirs, at) = tmp.0.as_ref().expect("a temporary file not yet renamed");
        let placed = set_mtime(&file, mtime)
            .and_then(|()| this.move_into_place(dirs, at, &path))
            .map_err(|e| this.io_err(&k, "cannot write", e))?;
        tmp.renamed();
        this.written(&placed, &path);
        Ok(())
    })
    .await
}

/// A temporary file (its directory and path), removed when dropped unless it was renamed
/// into place.
struct Tmp(Option<(Dirs, PathBuf)>);

impl Tmp {
    fn renamed(mut self) {
        self.0 = None;
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if let Some((dirs, path)) = &self.0 {
            let _ = dirs.remove(file_name(path));
        }
    }
}
