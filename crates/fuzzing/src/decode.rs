//! Target 1: arbitrary bytes -> `audio::decode_bytes` -> reference and query quads, the
//! chain the engine runs on every indexed file and every query; and the streaming decode
//! identify uses, which must agree with it.

use std::sync::OnceLock;

use audio::DecodeOptions;
use fingerprint::{Fingerprinter, Params};

/// Extension hints the first input byte picks from (modulo the count), so the fuzzer also
/// tries every format with a hint that lies about it.
pub const EXT_HINTS: &[Option<&str>] = &[
    None,
    Some("mp3"),
    Some("wav"),
    Some("flac"),
    Some("ogg"),
    Some("opus"),
    Some("m4a"),
    Some("aiff"),
    Some("caf"),
    Some("mka"),
];

/// Decoding stops at this many seconds of audio: long enough for every code path (the
/// fingerprint needs a few seconds), short enough that one input costs milliseconds.
pub const MAX_DURATION_S: f64 = 20.0;

fn fingerprinter() -> &'static Fingerprinter {
    static FP: OnceLock<Fingerprinter> = OnceLock::new();
    FP.get_or_init(|| {
        Fingerprinter::new(Params::default()).expect("the default parameters are valid")
    })
}

/// Decodes `data[1..]` with the hint `data[0]` picks, then fingerprints the result as a
/// reference and as a query. Panics only when a contract is broken.
pub fn decode_to_fingerprint(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let hint = EXT_HINTS[usize::from(selector) % EXT_HINTS.len()];
    let fp = fingerprinter();
    let opts = DecodeOptions {
        target_rate_hz: fp.params().sample_rate_hz,
        max_duration_s: MAX_DURATION_S,
    };
    let plain = audio::decode_bytes(bytes.to_vec(), hint, &opts);
    // Identify's decode (resampling on a helper thread, the spectrogram and the peaks made
    // as the samples come) gives the same samples or the same error, the same spectrogram
    // and the same print.
    let mut spectrogram = fp.spectrogram_stream();
    let mut print = fp.query_stream();
    let streamed = audio::decode_bytes_streaming(bytes.to_vec(), hint, &opts, &mut |samples| {
        spectrogram.push(samples);
        print.push(samples);
    });
    match (&plain, &streamed) {
        (Ok((a, _)), Ok((b, _))) => assert!(a == b, "the streaming decode differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "different errors"),
        _ => panic!(
            "one decode failed and the other did not: {:?} / {:?}",
            plain.as_ref().err(),
            streamed.as_ref().err()
        ),
    }
    let decoded = match plain {
        Ok((decoded, _tags)) => decoded,
        Err(error) => {
            assert!(!error.to_string().is_empty(), "an error without a message");
            return;
        }
    };
    let (whole, streamed) = (fp.spectrogram(&decoded.samples), spectrogram.finish());
    assert!(
        whole.n_frames == streamed.n_frames
            && whole
                .data
                .iter()
                .map(|x| x.to_bits())
                .eq(streamed.data.iter().map(|x| x.to_bits())),
        "the streamed spectrogram differs"
    );
    let (whole, streamed) = (fp.query_print(&decoded.samples), print.finish());
    assert!(
        whole.quads == streamed.quads
            && whole.verify_peaks == streamed.verify_peaks
            && whole.n_frames == streamed.n_frames,
        "the streamed print differs"
    );
    assert_eq!(decoded.rate_hz, opts.target_rate_hz, "wrong output rate");
    assert!(
        decoded.samples.iter().all(|s| s.is_finite()),
        "decoded samples must be finite"
    );
    // The cap is checked per decoded packet, so one packet's worth may pass it.
    assert!(
        decoded.duration_s <= MAX_DURATION_S + 1.0,
        "decoded {} s past the {MAX_DURATION_S} s cap",
        decoded.duration_s
    );
    let n_frames = decoded.samples.len() as f32 / fp.params().hop as f32 + 1.0;
    for quad in fp.reference(&decoded.samples) {
        assert!(
            quad.time as f32 / fingerprint::TIME_SCALE <= n_frames,
            "a reference quad after the end"
        );
    }
    for quad in fp.query(&decoded.samples) {
        assert!(
            quad.time.is_finite() && quad.bin.is_finite() && quad.span.is_finite(),
            "a query quad with a non-finite field: {quad:?}"
        );
    }
}
