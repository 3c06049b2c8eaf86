//! The single error type of the audio crate, worded for the person who has to act on it.

use std::path::PathBuf;

/// Everything that can go wrong while reading or decoding audio.
///
/// Each message says what happened and what the caller (or its user) can do about it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}; check that the file exists and is readable", path.display())]
    Io {
        /// The file that failed (`<memory>` for in-memory input).
        path: PathBuf,
        /// The underlying operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// The container or codec is not one we can decode.
    #[error(
        "unsupported audio: {reason}; convert the file to MP3, FLAC, Ogg Vorbis/Opus, WAV, AIFF or AAC/M4A"
    )]
    Unsupported {
        /// What exactly is unsupported.
        reason: String,
    },

    /// The data is recognised but too damaged to decode.
    #[error(
        "malformed audio: {reason}; the file is corrupt or truncated, re-download or re-encode it"
    )]
    Malformed {
        /// What the decoder tripped over.
        reason: String,
    },

    /// The container holds no audio stream (for example a video-only or cover-art-only file).
    #[error("the file contains no audio track; nothing to index")]
    NoAudioTrack,

    /// The file is empty or its audio track decoded to zero samples.
    #[error("the file contains no audio samples; nothing to index")]
    Empty,

    /// The decoded audio exceeds [`crate::DecodeOptions::max_duration_s`].
    #[error(
        "the audio is longer than the {limit_s} s limit; split the file or raise max_duration_s"
    )]
    TooLong {
        /// The limit that was exceeded, in seconds.
        limit_s: f64,
    },

    /// The caller passed options we cannot honour.
    #[error("invalid decode options: {reason}; fix the calling code")]
    InvalidOptions {
        /// Which option is wrong and why.
        reason: String,
    },

    /// An internal invariant broke (for example the resampler rejected our buffers).
    #[error(
        "internal audio pipeline error: {reason}; this is a bug in cratedigger, please report it"
    )]
    Internal {
        /// Details for the bug report.
        reason: String,
    },
}
