//! Every "input changed" error states what the checkpoint recorded and what
//! the input holds now, both right: where the line was and where it is, how
//! long the input was expected to be and how long it is.

use std::path::{Path, PathBuf};

use linemark::{Error, Line, Runner, SeekMode, StopToken};

fn input_with(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("input.txt");
    std::fs::write(&path, text(lines)).unwrap();
    path
}

fn text(lines: usize) -> String {
    (1..=lines).map(|n| format!("item-{n:02}\n")).collect()
}

const LINE: u64 = 8; // "item-NN\n"

fn ok(_: &Line<'_>) -> Result<(), String> {
    Ok(())
}

/// The run's error, which must be an input change; with its fields.
fn changed(result: linemark::Result<linemark::Report>) -> (String, u64, u64, String, String) {
    match result {
        Err(err @ Error::InputChanged { .. }) => {
            let shown = err.to_string();
            let Error::InputChanged {
                line,
                offset,
                expected,
                found,
                ..
            } = err
            else {
                unreachable!()
            };
            (shown, line, offset, expected, found)
        }
        other => panic!("not an input change: {other:?}"),
    }
}

#[test]
fn a_truncated_input_is_reported_with_its_real_length() {
    for mode in [SeekMode::Offset, SeekMode::Lines] {
        let dir = tempfile::tempdir().unwrap();
        let input = input_with(dir.path(), 8);
        Runner::new().seek_mode(mode).run_task(&input, &ok).unwrap();
        // 8 lines of 8 bytes were finished; 21 bytes are left.
        let bytes = std::fs::read(&input).unwrap();
        std::fs::write(&input, &bytes[..21]).unwrap();
        let (shown, line, offset, _, found) =
            changed(Runner::new().seek_mode(mode).run_task(&input, &ok));
        assert_eq!((line, offset), (8, 7 * LINE), "{mode:?}: {shown}");
        let expected_found = match mode {
            SeekMode::Offset => "the input ends at byte 21, before the line".to_owned(),
            // The third line, cut, is a line without a newline.
            _ => "the input ends after 3 lines, at byte 21".to_owned(),
        };
        assert_eq!(found, expected_found, "{mode:?}: {shown}");
        assert!(
            shown.contains("at line 8 (byte 56) expected a 8-byte line"),
            "{shown}"
        );
    }
}

#[test]
fn an_input_cut_inside_the_last_finished_line_says_where_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 4);
    Runner::new().run_task(&input, &ok).unwrap();
    let bytes = std::fs::read(&input).unwrap();
    std::fs::write(&input, &bytes[..3 * LINE as usize + 3]).unwrap();
    let (shown, line, offset, _, found) = changed(Runner::new().run_task(&input, &ok));
    assert_eq!((line, offset), (4, 3 * LINE), "{shown}");
    assert_eq!(found, "the input ends at byte 27", "{shown}");
}

#[test]
fn a_short_stream_is_reported_with_its_lines_and_bytes_and_the_recorded_offset() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("stream.checkpoint");
    let all = text(30);
    Runner::new()
        .run_reader_task(all.as_bytes(), &checkpoint, &ok)
        .unwrap();
    let short = text(3);
    let (shown, line, offset, _, found) =
        changed(Runner::new().run_reader_task(short.as_bytes(), &checkpoint, &ok));
    assert_eq!((line, offset), (30, 29 * LINE), "{shown}");
    assert_eq!(found, "the input ends after 3 lines, at byte 24", "{shown}");
}

#[test]
fn a_moved_line_is_reported_with_both_offsets() {
    // Line 1 grew by a byte: the last finished line, unchanged, is one
    // byte further on.
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("stream.checkpoint");
    Runner::new()
        .run_reader_task(text(5).as_bytes(), &checkpoint, &ok)
        .unwrap();
    let grown = text(5).replacen("item-01\n", "item-01x\n", 1);
    let (shown, line, offset, expected, found) =
        changed(Runner::new().run_reader_task(grown.as_bytes(), &checkpoint, &ok));
    assert_eq!((line, offset), (5, 4 * LINE), "{shown}");
    let digest = format!("{:08x}", linemark::digest(b"item-05"));
    assert_eq!(expected, format!("a 8-byte line with digest {digest}"));
    assert_eq!(
        found,
        format!(
            "a 8-byte line with digest {digest} (\"item-05\") at byte 33 (an earlier line changed length)"
        ),
        "{shown}"
    );
}

#[test]
fn a_moved_failed_line_is_reported_with_both_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("stream.checkpoint");
    let fail_3 = |line: &Line<'_>| -> Result<(), String> {
        if line.number() == 3 {
            Err("no".into())
        } else {
            Ok(())
        }
    };
    let report = Runner::new()
        .run_reader_task(text(5).as_bytes(), &checkpoint, &fail_3)
        .unwrap();
    assert_eq!(report.failed_total, 1);
    let grown = text(5).replacen("item-01\n", "item-01x\n", 1);
    let (shown, line, offset, expected, found) = changed(
        Runner::new()
            .retry_failed(true)
            .run_reader_task(grown.as_bytes(), &checkpoint, &ok),
    );
    assert_eq!((line, offset), (3, 2 * LINE), "{shown}");
    let digest = format!("{:08x}", linemark::digest(b"item-03"));
    assert_eq!(expected, format!("a 8-byte line with digest {digest}"));
    assert_eq!(
        found,
        format!("a 8-byte line with digest {digest} (\"item-03\") at byte 17"),
        "{shown}"
    );
}

#[test]
fn a_stopped_then_truncated_run_names_the_recorded_offset_not_the_end() {
    // The checkpoint is mid-input; the input was cut before it.
    let dir = tempfile::tempdir().unwrap();
    let input = input_with(dir.path(), 50);
    let stop = StopToken::new();
    let task = |line: &Line<'_>| -> Result<(), String> {
        if line.number() == 40 {
            stop.stop();
        }
        Ok(())
    };
    Runner::new()
        .stop_token(stop.clone())
        .run_task(&input, &task)
        .unwrap();
    std::fs::write(&input, text(10)).unwrap();
    let (shown, line, offset, _, found) = changed(Runner::new().run_task(&input, &ok));
    assert_eq!((line, offset), (40, 39 * LINE), "{shown}");
    assert_eq!(
        found, "the input ends at byte 80, before the line",
        "{shown}"
    );
}
