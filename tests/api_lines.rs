//! Lines as a user handles them: errors that name the input file the user
//! gave, and owned lines that outlive their reader.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::thread;

use common::Input;
use linemark::{Checkpoint, Error, FailedLine, Line, LineReader, OwnedLine, Position};

fn open(path: &Path) -> BufReader<File> {
    BufReader::new(File::open(path).unwrap())
}

/// Asserts that `err` names `path` both in its field and in its message.
fn assert_names(err: &Error, path: &Path) {
    assert_eq!(err.path(), Some(path), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
    assert!(!text.contains("<input>"), "{text}");
}

#[test]
fn as_str_names_the_path_given_to_the_reader() {
    let input = Input::new(vec![b"ok\n".to_vec(), b"ab\xffcd\n".to_vec()]);
    let mut lines = LineReader::new(open(&input.path)).path(&input.path);
    lines.next_line().unwrap();
    let line = lines.next_line().unwrap().unwrap();
    assert_eq!(line.path(), Some(input.path.as_path()));
    let err = line.as_str().unwrap_err();
    assert_names(&err, &input.path);
    match err {
        Error::InvalidUtf8 {
            path: Some(path),
            line: 2,
            offset: 3,
            valid_up_to: 2,
            ..
        } => assert_eq!(path, input.path),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn lines_copied_across_buffer_refills_name_the_path_too() {
    let input = Input::new(vec![b"a line longer than the buffer \xff\n".to_vec()]);
    let file = BufReader::with_capacity(4, File::open(&input.path).unwrap());
    let mut lines = LineReader::new(file).path(&input.path);
    let err = lines.next_line().unwrap().unwrap().as_str().unwrap_err();
    assert_names(&err, &input.path);
}

#[test]
fn a_reader_without_a_path_names_none() {
    let mut lines = LineReader::new(&b"\xff\n"[..]);
    let line = lines.next_line().unwrap().unwrap();
    assert_eq!(line.path(), None);
    let err = line.as_str().unwrap_err();
    assert_eq!(err.path(), None);
    // The caller that knows the file can still add it.
    assert_names(&err.with_path("late.txt"), Path::new("late.txt"));
}

#[test]
fn a_line_made_by_hand_takes_a_path() {
    let line = Line::new(b"caf\xe9\n", 7, 40).with_path("menu.txt");
    assert_eq!(line.path(), Some(Path::new("menu.txt")));
    assert_eq!((line.number(), line.offset()), (7, 40));
    let err = line.as_str().unwrap_err();
    assert_names(&err, Path::new("menu.txt"));
    assert!(matches!(
        err,
        Error::InvalidUtf8 {
            line: 7,
            offset: 40,
            valid_up_to: 3,
            ..
        }
    ));
}

#[test]
fn a_line_over_the_limit_names_the_path() {
    let input = Input::new(vec![b"far too long\n".to_vec(), b"ok\n".to_vec()]);
    let mut lines = LineReader::new(open(&input.path))
        .max_line_len(4)
        .path(&input.path);
    let err = lines.next_line().unwrap_err();
    assert!(matches!(err, Error::LineTooLong { line: 1, .. }), "{err}");
    assert_names(&err, &input.path);
}

#[test]
fn seek_errors_name_the_path_through_with_path() {
    let input = Input::new(vec![b"a\n".to_vec(), b"B\n".to_vec(), b"c\n".to_vec()]);
    let done = Position::start().after(b"a\n").after(b"b\n");

    let err = done
        .seek_offset(&mut open(&input.path))
        .map_err(|err| err.with_path(&input.path))
        .unwrap_err();
    assert!(matches!(err, Error::InputChanged { line: 2, .. }), "{err}");
    assert_names(&err, &input.path);

    let err = done
        .seek_lines(&mut open(&input.path))
        .map_err(|err| err.with_path(&input.path))
        .unwrap_err();
    assert!(matches!(err, Error::InputChanged { line: 2, .. }), "{err}");
    assert_names(&err, &input.path);

    let err = done
        .seek_content(&mut open(&input.path))
        .map_err(|err| err.with_path(&input.path))
        .unwrap_err();
    assert!(
        matches!(err, Error::LastLineNotFound { line: 2, .. }),
        "{err}"
    );
    assert_names(&err, &input.path);
}

#[test]
fn an_ambiguous_last_line_names_the_path() {
    let input = Input::new(vec![b"x\n".to_vec(), b"x\n".to_vec(), b"y\n".to_vec()]);
    // Finished through an "x" recorded as line 3, where there is a "y" now.
    let done = Position::start().after(b"a\n").after(b"b\n").after(b"x\n");
    let err = done
        .seek_content(&mut open(&input.path))
        .map_err(|err| err.with_path(&input.path))
        .unwrap_err();
    assert!(
        matches!(err, Error::AmbiguousLastLine { line: 3, .. }),
        "{err}"
    );
    assert_names(&err, &input.path);
}

/// A reader whose reads fail, as a disk or a network file system can.
struct Failing;

impl Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("device gone"))
    }
}

impl BufRead for Failing {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Err(io::Error::other("device gone"))
    }

    fn consume(&mut self, _: usize) {}
}

impl Seek for Failing {
    fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
        Ok(0)
    }
}

#[test]
fn io_errors_of_a_seek_and_of_a_reader_name_the_path() {
    let path = Path::new("mounted/input.txt");
    let done = Position::start().after(b"a\n");
    let seeks: [fn(&Position, &mut Failing) -> linemark::Result<Position>; 3] = [
        Position::seek_offset,
        Position::seek_lines,
        Position::seek_content,
    ];
    for seek in seeks {
        let err = seek(&done, &mut Failing)
            .map_err(|err| err.with_path(path))
            .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert_names(&err, path);
    }
    let err = LineReader::new(Failing).path(path).next_line().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_names(&err, path);
}

#[test]
fn with_path_does_not_rename_a_file_already_named() {
    let input = Input::new(vec![b"\xff\n".to_vec()]);
    let mut lines = LineReader::new(open(&input.path)).path(&input.path);
    let err = lines.next_line().unwrap().unwrap().as_str().unwrap_err();
    assert_names(&err.with_path("other.txt"), &input.path);

    let checkpoint_path = input.sibling("job.checkpoint");
    let _held = Checkpoint::open(&checkpoint_path).unwrap();
    let locked = Checkpoint::open(&checkpoint_path).unwrap_err();
    assert_eq!(
        locked.with_path(&input.path).path(),
        Some(checkpoint_path.as_path())
    );
}

#[test]
fn a_failed_line_read_again_names_the_path_through_with_path() {
    let input = Input::new(vec![b"ok\n".to_vec(), b"changed\n".to_vec()]);
    let failed = FailedLine::new(&Line::new(b"broken\n", 2, 3), 1, "exit status 1");
    let mut buf = Vec::new();
    let err = failed
        .read_from(&mut open(&input.path), &mut buf)
        .map_err(|err| err.with_path(&input.path))
        .unwrap_err();
    assert!(matches!(err, Error::InputChanged { line: 2, .. }), "{err}");
    assert_names(&err, &input.path);
}

/// Every accessor of `owned` answers as the borrowed `line` does.
fn assert_same(owned: &OwnedLine, line: &Line<'_>) {
    assert_eq!(owned.as_line(), *line);
    assert_eq!(owned.raw(), line.raw());
    assert_eq!(owned.as_bytes(), line.as_bytes());
    assert_eq!(owned.number(), line.number());
    assert_eq!(owned.offset(), line.offset());
    assert_eq!(owned.path(), line.path());
    assert_eq!(owned.is_terminated(), line.is_terminated());
    assert_eq!(owned.end_position(), line.end_position());
    match (owned.as_str(), line.as_str()) {
        (Ok(owned), Ok(line)) => assert_eq!(owned, line),
        (Err(owned), Err(line)) => assert_eq!(owned.to_string(), line.to_string()),
        other => panic!("as_str differs: {other:?}"),
    }
}

#[test]
fn owned_lines_answer_as_the_borrowed_ones() {
    let input = Input::new(vec![
        b"plain\n".to_vec(),
        b"crlf\r\n".to_vec(),
        b"\n".to_vec(),
        b"bad \xff\n".to_vec(),
        b"unterminated".to_vec(),
    ]);
    let mut lines = LineReader::new(open(&input.path)).path(&input.path);
    let mut owned = Vec::new();
    while let Some(line) = lines.next_line().unwrap() {
        let copy = line.to_owned_line();
        assert_same(&copy, &line);
        assert_eq!(OwnedLine::from(&line), copy);
        assert_eq!(OwnedLine::from(line), copy);
        owned.push(copy);
    }
    // The reader is gone; the owned lines are not.
    drop(lines);
    assert_eq!(owned.len(), 5);
    assert_eq!(owned[1].as_str().unwrap(), "crlf");
    assert!(!owned[4].is_terminated());
    assert_eq!(
        owned[4].end_position().offset(),
        input.lines.concat().len() as u64
    );
    let err = owned[3].as_str().unwrap_err();
    assert!(matches!(err, Error::InvalidUtf8 { line: 4, .. }), "{err}");
    assert_names(&err, &input.path);

    let distinct: HashSet<OwnedLine> = owned.iter().cloned().chain(owned.clone()).collect();
    assert_eq!(distinct.len(), owned.len());
}

#[test]
fn owned_lines_move_to_another_thread_and_commit_back() {
    let input = Input::generated(50);
    let checkpoint_path = input.sibling("job.checkpoint");
    let mut checkpoint = Checkpoint::open(&checkpoint_path).unwrap();
    let mut lines = LineReader::new(open(&input.path)).path(&input.path);
    let mut batch = Vec::new();
    while let Some(line) = lines.next_line().unwrap() {
        batch.push(line.to_owned_line());
    }
    let worked: Vec<(OwnedLine, usize)> = thread::spawn(move || {
        batch
            .into_iter()
            .map(|line| {
                let len = line.as_str().unwrap().len();
                (line, len)
            })
            .collect()
    })
    .join()
    .unwrap();
    for ((line, len), raw) in worked.iter().zip(&input.lines) {
        assert_eq!(line.raw(), raw.as_slice());
        assert_eq!(*len, line.as_bytes().len());
        assert_eq!(line.path(), Some(input.path.as_path()));
        checkpoint.commit_line(&line.as_line()).unwrap();
    }
    assert_eq!(checkpoint.position(), input.positions()[50]);
    checkpoint.close().unwrap();
}

#[test]
fn an_owned_line_made_from_a_hand_made_line() {
    let line = Line::new(b"id=7\n", 3, 12);
    let owned = OwnedLine::from(line);
    assert_same(&owned, &line);
    assert_eq!(owned.path(), None);
    let named = line.with_path("ids.txt").to_owned_line();
    assert_eq!(named.path(), Some(Path::new("ids.txt")));
    assert_ne!(named, owned, "the path is part of the line");
}

#[test]
fn line_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Line<'static>>();
    assert_send_sync::<OwnedLine>();
    fn assert_static<T: 'static>() {}
    assert_static::<OwnedLine>();
}

#[test]
fn a_cursor_is_a_reader_with_no_path() {
    let mut cursor = Cursor::new(&b"a\n\xff\n"[..]);
    let done = Position::start().after(b"a\n");
    let reached = done.seek_offset(&mut cursor).unwrap();
    let mut lines = LineReader::resume(cursor, reached).path("in-memory");
    let err = lines.next_line().unwrap().unwrap().as_str().unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidUtf8 {
                line: 2,
                offset: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, Path::new("in-memory"));
}

/// The error message the runner records for line 2 of `input` (invalid
/// UTF-8) when the task calls `as_str`.
fn recorded_as_str_error(input: &Input, runner: &linemark::Runner) -> String {
    let report = runner
        .run(&input.path, |line: &Line<'_>| {
            line.as_str()?;
            Ok(())
        })
        .unwrap();
    let checkpoint = Checkpoint::open(&report.checkpoint).unwrap();
    let failed: Vec<FailedLine> = checkpoint.failed().unwrap().map(Result::unwrap).collect();
    assert_eq!(failed.len(), 1);
    failed[0].error().to_string()
}

fn bad_second_line() -> Input {
    Input::new(vec![b"ok\n".to_vec(), b"\xff\n".to_vec(), b"ok\n".to_vec()])
}

#[test]
fn a_runner_task_sees_lines_that_name_the_path() {
    let input = bad_second_line();
    let error = recorded_as_str_error(&input, &linemark::Runner::new().workers(1));
    assert!(
        error.starts_with(&format!("{}: line 2", input.path.display())),
        "{error}"
    );
}

#[test]
fn runner_lines_name_the_path_with_workers_and_when_retried() {
    let input = bad_second_line();
    let first = recorded_as_str_error(&input, &linemark::Runner::new().workers(3));
    let retried = recorded_as_str_error(&input, &linemark::Runner::new().retry_failed(true));
    for error in [first, retried] {
        assert!(
            error.starts_with(&format!("{}: line 2", input.path.display())),
            "{error}"
        );
    }
}
