//! Video preflight: the facts of an MP4 or MOV file (frames, size, fps, duration) read from
//! its container index, with Mozilla's `mp4parse` (Firefox's ISO-BMFF parser) and no
//! ffmpeg process, so that a job whose video cannot run is refused at intake rather than
//! minutes into a GPU run.
//!
//! Only the index is read. The top-level boxes are walked by their headers, seeking past
//! the media data (`mdat`, gigabytes, never read); only `ftyp` and `moov` are read, each
//! under a cap, and handed to `mp4parse` from memory. A box that claims to run past the end
//! of the file is how a cut-off copy shows itself.
//!
//! What is not ISO-BMFF (`.mkv`, `.avi`, random bytes named `.mp4`) is refused with the
//! reason: its frames cannot be checked here, and NVIDIA's pipelines are fed MP4. A
//! fragmented MP4 (`moof` boxes, frame counts spread over the fragments) is refused too,
//! with the ffmpeg line that remuxes it.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The facts of a video file read from its container (no decoding): what NVIDIA's models
/// need aligned between an input and its control videos, and what an ETA counts in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoFacts {
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration_seconds: f64,
}

/// The largest `moov` read: a two-hour 60 fps video's index is a few MiB.
pub const MAX_MOOV_BYTES: u64 = 64 << 20;
/// The largest `ftyp` read (it holds a handful of four-byte brands).
const MAX_FTYP_BYTES: u64 = 4096;
/// Top-level boxes walked at most: a real file has a handful; millions of tiny boxes are
/// not a video, and walking them would only cost time.
const MAX_TOP_BOXES: usize = 100_000;

/// Why a file is not a video the models can take. Each message names the file and says
/// what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{path} is not an MP4 or MOV video: {why}; expected an ISO-BMFF file (.mp4, .m4v, .mov) such as ffmpeg writes")]
    NotMp4 { path: PathBuf, why: String },
    #[error("{path} is cut short: {why}; expected the whole file (was it still being copied?)")]
    Truncated { path: PathBuf, why: String },
    #[error("{path}: its `{kind}` box is {size} bytes, over the {cap} bytes a video's index may take; expected a sane MP4")]
    BoxTooLarge { path: PathBuf, kind: String, size: u64, cap: u64 },
    #[error(
        "{path} is a fragmented MP4 (moof boxes), whose frames cannot be counted from its index; \
         expected a plain MP4: remux it with `ffmpeg -i IN -c copy -movflags +faststart OUT.mp4`"
    )]
    Fragmented { path: PathBuf },
    #[error("{path} has no video track (it holds {found}); expected a video")]
    NoVideo { path: PathBuf, found: String },
    #[error("{path} has a video track with no frames; expected at least one frame")]
    NoFrames { path: PathBuf },
    #[error("{path} is a damaged MP4: {why}; expected a playable video")]
    Malformed { path: PathBuf, why: String },
}

/// The facts of the video at `path` (a regular file; a fifo or a folder is refused).
pub fn probe(path: &Path) -> Result<VideoFacts, ProbeError> {
    let mut file = crate::fsutil::open_regular_file(path).map_err(|why| ProbeError::Read { path: path.to_path_buf(), why })?;
    let len = file.metadata().map_err(|e| ProbeError::Read { path: path.to_path_buf(), why: e.to_string() })?.len();
    probe_reader(&mut file, len, path)
}

/// [`probe`] over any seekable reader of `len` bytes; `path` only names it in messages.
pub fn probe_reader<R: Read + Seek>(reader: &mut R, len: u64, path: &Path) -> Result<VideoFacts, ProbeError> {
    let index = walk(reader, len, path)?;
    facts(&index, len, path)
}

/// What the top-level walk found.
struct Index {
    ftyp: Option<Vec<u8>>,
    moov: Option<Vec<u8>>,
    fragments: bool,
    media: bool,
}

/// Top-level box types an ISO-BMFF file may start with (ISO 14496-12 and QuickTime).
const FIRST_BOXES: [&[u8; 4]; 12] =
    [b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx", b"junk", b"PICT"];

fn walk<R: Read + Seek>(r: &mut R, len: u64, path: &Path) -> Result<Index, ProbeError> {
    let p = || path.to_path_buf();
    let io_err = |e: io::Error| ProbeError::Read { path: path.to_path_buf(), why: e.to_string() };
    let mut index = Index { ftyp: None, moov: None, fragments: false, media: false };
    let mut offset = 0u64;
    let mut boxes = 0usize;
    if len == 0 {
        return Err(ProbeError::NotMp4 { path: p(), why: "the file is empty".into() });
    }
    r.seek(SeekFrom::Start(0)).map_err(io_err)?;
    while offset < len {
        boxes += 1;
        if boxes > MAX_TOP_BOXES {
            return Err(ProbeError::Malformed { path: p(), why: format!("over {MAX_TOP_BOXES} top-level boxes") });
        }
        let left = len - offset;
        if left < 8 {
            return Err(match offset {
                0 => ProbeError::NotMp4 { path: p(), why: format!("it is only {len} bytes long") },
                _ => ProbeError::Truncated { path: p(), why: format!("{left} stray bytes at offset {offset}, too few for a box header") },
            });
        }
        let mut head = [0u8; 8];
        r.read_exact(&mut head).map_err(io_err)?;
        let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind: [u8; 4] = [head[4], head[5], head[6], head[7]];
        if offset == 0 && !FIRST_BOXES.contains(&&kind) {
            return Err(ProbeError::NotMp4 {
                path: p(),
                why: format!("it starts with the bytes {}, not an MP4 box such as `ftyp`", show_bytes(&head)),
            });
        }
        if !kind.iter().all(|b| b.is_ascii_graphic() || *b == b' ' || *b >= 0xA0) {
            return Err(ProbeError::Malformed {
                path: p(),
                why: format!("the box at offset {offset} has no valid type ({})", show_bytes(&kind)),
            });
        }
        let name = String::from_utf8_lossy(&kind).into_owned();
        let (size, header) = match size32 {
            0 => (left, 8u64),
            1 => {
                if left < 16 {
                    return Err(ProbeError::Truncated {
                        path: p(),
                        why: format!("the `{name}` box at offset {offset} ends inside its header"),
                    });
                }
                let mut large = [0u8; 8];
                r.read_exact(&mut large).map_err(io_err)?;
                (u64::from_be_bytes(large), 16u64)
            }
            n => (u64::from(n), 8u64),
        };
        if size < header {
            return Err(ProbeError::Malformed {
                path: p(),
                why: format!("the `{name}` box at offset {offset} claims {size} bytes, less than its own header"),
            });
        }
        if size > left {
            return Err(ProbeError::Truncated {
                path: p(),
                why: format!("the `{name}` box at offset {offset} claims {size} bytes, but the file ends {left} bytes after its start"),
            });
        }
        let body = size - header;
        match &kind {
            b"ftyp" if index.ftyp.is_none() => index.ftyp = Some(read_box(r, kind, size, body, MAX_FTYP_BYTES, path)?),
            b"moov" if index.moov.is_none() => index.moov = Some(read_box(r, kind, size, body, MAX_MOOV_BYTES, path)?),
            b"moov" => return Err(ProbeError::Malformed { path: p(), why: "it has two `moov` boxes".into() }),
            other => {
                match other {
                    b"moof" => index.fragments = true,
                    b"mdat" => index.media = true,
                    _ => {}
                }
                r.seek(SeekFrom::Current(body as i64)).map_err(io_err)?;
            }
        }
        offset += size;
    }
    Ok(index)
}

/// One box whole, its header normalised to the 8-byte form `mp4parse` reads.
fn read_box<R: Read>(r: &mut R, kind: [u8; 4], size: u64, body: u64, cap: u64, path: &Path) -> Result<Vec<u8>, ProbeError> {
    let name = String::from_utf8_lossy(&kind).into_owned();
    if size > cap {
        return Err(ProbeError::BoxTooLarge { path: path.to_path_buf(), kind: name, size, cap });
    }
    let mut bytes = Vec::with_capacity(body as usize + 8);
    bytes.extend_from_slice(&((body + 8) as u32).to_be_bytes());
    bytes.extend_from_slice(&kind);
    r.take(body).read_to_end(&mut bytes).map_err(|e| ProbeError::Read { path: path.to_path_buf(), why: e.to_string() })?;
    if (bytes.len() as u64) < body + 8 {
        return Err(ProbeError::Truncated { path: path.to_path_buf(), why: format!("the `{name}` box ends early") });
    }
    Ok(bytes)
}

fn facts(index: &Index, len: u64, path: &Path) -> Result<VideoFacts, ProbeError> {
    let p = || path.to_path_buf();
    let malformed = |why: String| ProbeError::Malformed { path: path.to_path_buf(), why };
    let Some(moov) = &index.moov else {
        return Err(match index.media {
            true => ProbeError::Truncated { path: p(), why: "it has media data but no `moov` index (ffmpeg writes it last)".into() },
            false => malformed("it has no `moov` index box".into()),
        });
    };
    let mut bytes = Vec::with_capacity(index.ftyp.as_ref().map_or(0, Vec::len) + moov.len());
    bytes.extend_from_slice(index.ftyp.as_deref().unwrap_or_default());
    bytes.extend_from_slice(moov);
    let context = mp4parse::read_mp4(&mut io::Cursor::new(bytes)).map_err(|e| malformed(describe(e)))?;
    if index.fragments || context.mvex.is_some() {
        return Err(ProbeError::Fragmented { path: p() });
    }
    let Some(track) = context.tracks.iter().find(|t| t.track_type == mp4parse::TrackType::Video) else {
        return Err(ProbeError::NoVideo { path: p(), found: track_kinds(&context) });
    };
    let stts = track.stts.as_ref().ok_or_else(|| malformed("its video track has no time-to-sample table (stts)".into()))?;
    let frames: u64 = stts.samples.iter().map(|s| u64::from(s.sample_count)).sum();
    if frames == 0 {
        return Err(ProbeError::NoFrames { path: p() });
    }
    if let Some(stsz) = &track.stsz {
        if stsz.sample_size == 0 && stsz.sample_sizes.len() as u64 != frames {
            return Err(malformed(format!("its tables disagree: {frames} frames timed (stts), {} sized (stsz)", stsz.sample_sizes.len())));
        }
    }
    // Data the index points past the end: the tail of the file is missing.
    if let Some(last) = track.stco.as_ref().and_then(|c| c.offsets.iter().max().copied()) {
        if last >= len {
            return Err(ProbeError::Truncated {
                path: p(),
                why: format!("its frames are indexed up to offset {last}, but the file is {len} bytes"),
            });
        }
    }
    let entry = track.stsd.as_ref().and_then(|d| {
        d.descriptions.iter().find_map(|e| match e {
            mp4parse::SampleEntry::Video(v) => Some((u32::from(v.width), u32::from(v.height))),
            _ => None,
        })
    });
    // The sample entry holds the coded size; the track header (16.16 fixed point) the
    // display size, used only where the entry has none.
    let (width, height) = match (entry, &track.tkhd) {
        (Some((w, h)), _) if w > 0 && h > 0 => (w, h),
        (_, Some(t)) => (t.width >> 16, t.height >> 16),
        _ => (0, 0),
    };
    if width == 0 || height == 0 {
        return Err(malformed("its video track gives no frame size".into()));
    }
    let timescale = track.timescale.map_or(0, |t| t.0);
    if timescale == 0 {
        return Err(malformed("its video track has no timescale (mdhd)".into()));
    }
    let ticks: u128 = stts.samples.iter().map(|s| u128::from(s.sample_count) * u128::from(s.sample_delta)).sum();
    let ticks = if ticks > 0 { ticks } else { u128::from(track.duration.map_or(0, |d| d.0)) };
    if ticks == 0 {
        return Err(malformed("its frames have no duration".into()));
    }
    let duration_seconds = ticks as f64 / timescale as f64;
    let fps = frames as f64 / duration_seconds;
    if !duration_seconds.is_finite() || !fps.is_finite() || fps <= 0.0 {
        return Err(malformed(format!("its timing gives no frame rate ({frames} frames over {duration_seconds} s)")));
    }
    Ok(VideoFacts { frames, width, height, fps, duration_seconds })
}

/// `mp4parse`'s error in words.
fn describe(e: mp4parse::Error) -> String {
    match e {
        mp4parse::Error::InvalidData(status) => format!("its index is invalid ({status:?})"),
        mp4parse::Error::Unsupported(what) => format!("it uses what the parser does not support ({what})"),
        mp4parse::Error::UnexpectedEOF => "its index ends in the middle of an entry".into(),
        mp4parse::Error::Io(e) => format!("its index cannot be read ({e})"),
        mp4parse::Error::MoovMissing => "it has no `moov` index box".into(),
        mp4parse::Error::OutOfMemory => "its index claims more entries than fit in memory".into(),
    }
}

fn track_kinds(context: &mp4parse::MediaContext) -> String {
    if context.tracks.is_empty() {
        return "no tracks".into();
    }
    let kinds: Vec<&str> = context
        .tracks
        .iter()
        .map(|t| match t.track_type {
            mp4parse::TrackType::Audio => "an audio track",
            mp4parse::TrackType::Video => "a video track",
            mp4parse::TrackType::Picture => "a still-picture track",
            mp4parse::TrackType::AuxiliaryVideo => "an auxiliary video track",
            mp4parse::TrackType::Metadata => "a metadata track",
            mp4parse::TrackType::Unknown => "a track of unknown kind",
        })
        .collect();
    kinds.join(", ")
}

fn show_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/videos").join(name)
    }

    #[test]
    fn the_committed_fixture_videos_give_their_facts() {
        // What `ffprobe -count_frames` says of each: 16 frames of 64x64 at 8 fps, 2 s.
        for name in ["city1/color.mp4", "city1/depth.mp4", "street1/color.mp4", "street1/segmentation.mp4"] {
            let f = probe(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((f.frames, f.width, f.height), (16, 64, 64), "{name}: {f:?}");
            assert!((f.fps - 8.0).abs() < 1e-9 && (f.duration_seconds - 2.0).abs() < 1e-9, "{name}: {f:?}");
        }
        // A scene's control video is aligned with its input.
        let (c, d) = (probe(&fixture("city1/color.mp4")).unwrap(), probe(&fixture("city1/depth.mp4")).unwrap());
        assert_eq!((c.frames, c.width, c.height), (d.frames, d.width, d.height));
    }

    #[test]
    fn every_cut_of_a_real_video_is_refused_with_its_reason() {
        let bytes = std::fs::read(fixture("city1/color.mp4")).unwrap();
        let path = Path::new("cut.mp4");
        for cut in 0..bytes.len() {
            let got = probe_reader(&mut io::Cursor::new(&bytes[..cut]), cut as u64, path);
            let e = got.expect_err(&format!("a file cut at {cut} of {} bytes passed", bytes.len()));
            assert!(e.to_string().contains("cut.mp4"), "{e}");
        }
    }

    #[test]
    fn non_videos_are_refused_naming_the_file_and_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake.mp4");
        std::fs::write(&fake, b"fake city1/color.mp4").unwrap();
        let e = probe(&fake).unwrap_err();
        assert!(matches!(e, ProbeError::NotMp4 { .. }), "{e}");
        assert!(e.to_string().contains("fake.mp4") && e.to_string().contains("expected an ISO-BMFF file"), "{e}");
        std::fs::write(&fake, b"").unwrap();
        assert!(probe(&fake).unwrap_err().to_string().contains("empty"));
        assert!(matches!(probe(dir.path()), Err(ProbeError::Read { .. })), "a folder");
        assert!(matches!(probe(&dir.path().join("none.mp4")), Err(ProbeError::Read { .. })));
        // A box that claims more than the file holds.
        let mut huge = 16u32.to_be_bytes().to_vec();
        huge.extend_from_slice(b"ftypisom\0\0\0\0");
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(b"moov");
        std::fs::write(&fake, &huge).unwrap();
        assert!(matches!(probe(&fake), Err(ProbeError::Truncated { .. })));
    }

    #[test]
    fn an_absurd_index_is_refused_before_it_is_read() {
        // A `moov` that claims 1 GiB, with the bytes there (a sparse file: no disk used).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.mp4");
        let size: u64 = 1 << 30;
        let mut head = 8u32.to_be_bytes().to_vec();
        head.extend_from_slice(b"free");
        head.extend_from_slice(&(size as u32).to_be_bytes());
        head.extend_from_slice(b"moov");
        std::fs::write(&path, &head).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_len(8 + size).unwrap();
        match probe(&path) {
            Err(ProbeError::BoxTooLarge { kind, size: got, .. }) => assert_eq!((kind.as_str(), got), ("moov", size)),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Bytes of a real video changed anywhere: a clear error or sane facts, never a panic.
        #[test]
        fn a_damaged_video_never_panics(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = std::fs::read(fixture("street1/segmentation.mp4")).unwrap();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(f) = probe_reader(&mut io::Cursor::new(&bytes), bytes.len() as u64, Path::new("x.mp4")) {
                prop_assert!(f.frames > 0 && f.width > 0 && f.height > 0 && f.fps.is_finite() && f.fps > 0.0);
            }
        }
    }
}
