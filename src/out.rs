//! The results of one line, gathered while its task runs and appended to
//! the runner's outputs when the line is recorded as finished.

use std::io;

/// Where a task writes the results of its line, for a runner with outputs
/// ([`Runner::output`](crate::Runner::output)): one buffer per output, in
/// the order the outputs were given.
///
/// What a task writes here is appended to the outputs exactly once, when
/// its line is recorded as finished: what a failed attempt wrote is
/// discarded before the next attempt, and a line that fails for good
/// writes nothing. `Out` is an [`io::Write`] to the first output, so
/// `writeln!(out, ...)` works; [`to`](Out::to) reaches the others.
///
/// # Examples
///
/// ```
/// use std::io::Write;
/// use linemark::Runner;
///
/// let dir = tempfile::tempdir()?;
/// let input = dir.path().join("numbers.txt");
/// std::fs::write(&input, "3\nx\n5\n")?;
/// let (squares, rejects) = (dir.path().join("squares.txt"), dir.path().join("rejects.txt"));
/// Runner::new()
///     .output(&squares)
///     .output(&rejects)
///     .map(&input, |line, out| {
///         match line.as_str()?.parse::<u64>() {
///             Ok(n) => writeln!(out, "{}", n * n)?,
///             Err(_) => out.to(1).extend_from_slice(line.raw()),
///         }
///         Ok(())
///     })?;
/// assert_eq!(std::fs::read_to_string(&squares)?, "9\n25\n");
/// assert_eq!(std::fs::read_to_string(&rejects)?, "x\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Out {
    buffers: Vec<Vec<u8>>,
    /// The buffers' lengths before the attempt under way.
    marks: Vec<usize>,
    /// The runner has outputs: what is written counts. Without, nothing
    /// is marked or taken back (the lines of the fastest jobs pay nothing),
    /// and the buffers are only kept from growing.
    tracking: bool,
}

impl Out {
    /// Buffers for `outputs` outputs (at least one, written to nowhere
    /// when the runner has none).
    pub(crate) fn new(outputs: usize) -> Out {
        Out {
            buffers: vec![Vec::new(); outputs.max(1)],
            marks: vec![0; outputs.max(1)],
            tracking: outputs > 0,
        }
    }

    /// Buffers for `outputs` outputs from now on, empty.
    pub(crate) fn set_count(&mut self, outputs: usize) {
        self.buffers.resize_with(outputs.max(1), Vec::new);
        self.marks.resize(outputs.max(1), 0);
        self.tracking = outputs > 0;
        self.clear();
    }

    /// The buffer of output `output` (0 for the first given to the
    /// runner).
    ///
    /// # Panics
    ///
    /// If the runner has fewer outputs than `output + 1` (and `output` is
    /// not 0).
    pub fn to(&mut self, output: usize) -> &mut Vec<u8> {
        let count = self.buffers.len();
        self.buffers
            .get_mut(output)
            .unwrap_or_else(|| panic!("output {output} asked for, but the runner has {count}"))
    }

    /// Appends `bytes` to the first output's buffer.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffers[0].extend_from_slice(bytes);
    }

    /// An attempt starts: what it writes can be taken back.
    #[inline(always)]
    pub(crate) fn begin(&mut self) {
        if self.tracking {
            for (mark, buffer) in self.marks.iter_mut().zip(&self.buffers) {
                *mark = buffer.len();
            }
        }
    }

    /// Takes back what the attempt under way wrote.
    #[inline]
    pub(crate) fn discard(&mut self) {
        if self.tracking {
            for (mark, buffer) in self.marks.iter().zip(&mut self.buffers) {
                buffer.truncate(*mark);
            }
        }
    }

    #[inline]
    pub(crate) fn clear(&mut self) {
        for buffer in &mut self.buffers {
            buffer.clear();
        }
    }

    /// The bytes written to the first output.
    #[inline]
    pub(crate) fn first_len(&self) -> usize {
        self.buffers[0].len()
    }

    /// The buffers, by output.
    pub(crate) fn buffers(&self) -> &[Vec<u8>] {
        &self.buffers
    }

    /// Empty buffers for as many outputs.
    pub(crate) fn fresh(&self) -> Out {
        Out::new(if self.tracking { self.buffers.len() } else { 0 })
    }
}

impl Default for Out {
    /// A buffer for one output, whose bytes go nowhere (what
    /// [`Task::run`](crate::Task::run) passes to `run_into`).
    fn default() -> Out {
        Out::new(0)
    }
}

impl io::Write for Out {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.push(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
