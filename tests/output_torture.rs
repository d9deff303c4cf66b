//! Exactly-once output under SIGKILL: a runner with 8 workers maps 20,000
//! lines into an output, its process killed at random moments, then run to
//! the end. The output holds every line's result exactly once (in input
//! order with `keep_order`), whatever the kills threw away.
//!
//! The test binary spawns itself as the child; `LINEMARK_TEST_CHILD` gives
//! its role.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::Duration;

use linemark::{Checkpoint, Runner};

use common::{
    DEADLINE, Input, SEED_VAR, SplitMix64, child_role, env_path, serial, spawn_self, test_seed,
};

const INPUT_VAR: &str = "LINEMARK_TEST_INPUT";
const OUTPUT_VAR: &str = "LINEMARK_TEST_OUTPUT";
const KILLS: usize = 30;
const WORKERS: usize = 8;

/// A kind of task and the input it runs over.
#[derive(Clone, Copy)]
struct Job {
    lines: usize,
    /// A sleep of this long (batches of one line), or `None`: a cheap
    /// task of about 5 µs of spinning, in batches of many lines, finished
    /// out of order, held and recorded beyond the watermark.
    sleep: Option<Duration>,
    keep_order: bool,
}

/// The job: 20,000 lines, a task of about 0.2 ms (a sleep, so 8
/// workers overlap on any number of cores).
const SLOW: Job = Job {
    lines: 20_000,
    sleep: Some(Duration::from_micros(200)),
    keep_order: false,
};

const CHEAP: Job = Job {
    lines: 200_000,
    sleep: None,
    keep_order: false,
};
const SIGKILL: i32 = 9;

/// The child: maps every line to itself (`"<line>\n"`).
fn child(job: Job) {
    let report = Runner::new()
        .workers(WORKERS)
        .keep_order(job.keep_order)
        .output(env_path(OUTPUT_VAR))
        .map(env_path(INPUT_VAR), |line, out| {
            match job.sleep {
                Some(time) => thread::sleep(time),
                None => {
                    let started = std::time::Instant::now();
                    while started.elapsed() < Duration::from_micros(5) {
                        std::hint::spin_loop();
                    }
                }
            }
            out.write_all(line.raw())?;
            Ok(())
        })
        .unwrap();
    assert!(report.is_complete(), "{report}");
}

fn torture(test_name: &str, job: Job) {
    let _serial = serial();
    let seed = test_seed();
    eprintln!("output torture: seed {seed} (rerun with {SEED_VAR}={seed})");
    let mut rng = SplitMix64(seed);
    let input = Input::generated(job.lines);
    let output = input.sibling("output.txt");
    let checkpoint = input.sibling("input.txt.checkpoint");
    let env = [
        (INPUT_VAR, input.path.as_os_str()),
        (OUTPUT_VAR, output.as_os_str()),
    ];
    let mut kills = 0;
    let mut cut_back = 0u64;
    for round in 0..KILLS {
        let after = Duration::from_millis(5 + rng.next() % 40);
        let mut child = spawn_self(test_name, "child", &env);
        thread::sleep(after);
        if child.has_exited() {
            // Finished early: the job is done.
            let ended = child.kill_and_wait();
            assert!(ended.status.success(), "round {round}: {ended:?}");
            break;
        }
        let ended = child.kill_and_wait();
        assert_eq!(
            ended.status.signal(),
            Some(SIGKILL),
            "round {round}: {ended:?}"
        );
        kills += 1;
        // What the output holds past the recorded length is cut by the
        // next run: the results of lines not recorded.
        let recorded = Checkpoint::inspect(&checkpoint).unwrap();
        let len = std::fs::metadata(&output).map_or(0, |meta| meta.len());
        if let Some(&(_, recorded_len)) = recorded.outputs.first() {
            assert!(
                len >= recorded_len,
                "round {round}: the output is shorter ({len}) than recorded ({recorded_len})"
            );
            cut_back += len - recorded_len;
        }
    }
    spawn_self(test_name, "child", &env).wait_success(DEADLINE);
    eprintln!(
        "output torture: {kills} kills of {KILLS}, {cut_back} bytes of unrecorded results cut back"
    );
    assert!(
        kills >= KILLS / 2,
        "only {kills} runs were killed before the end"
    );

    let written = std::fs::read(&output).unwrap();
    let expected = input.lines.concat();
    if job.keep_order {
        assert!(
            written == expected,
            "the output is not the input in order ({} bytes against {})",
            written.len(),
            expected.len()
        );
        return;
    }
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for line in written.split_inclusive(|&b| b == b'\n') {
        *counts.entry(line).or_default() += 1;
    }
    let missing = input
        .lines
        .iter()
        .filter(|line| !counts.contains_key(line.as_slice()))
        .count();
    let repeated = counts.values().filter(|&&n| n > 1).count();
    let foreign = counts.len() + missing - input.lines.len();
    assert_eq!(
        (missing, repeated, foreign),
        (0, 0, 0),
        "lines missing, repeated, and not from the input"
    );
    assert_eq!(written.len(), expected.len());
}

#[test]
fn sigkill_at_random_moments_leaves_every_result_exactly_once() {
    const NAME: &str = "sigkill_at_random_moments_leaves_every_result_exactly_once";
    if child_role().as_deref() == Some("child") {
        return child(SLOW);
    }
    torture(NAME, SLOW);
}

#[test]
fn sigkill_at_random_moments_with_keep_order_leaves_the_results_in_input_order() {
    const NAME: &str =
        "sigkill_at_random_moments_with_keep_order_leaves_the_results_in_input_order";
    if child_role().as_deref() == Some("child") {
        return child(Job {
            keep_order: true,
            ..SLOW
        });
    }
    torture(
        NAME,
        Job {
            keep_order: true,
            ..SLOW
        },
    );
}

#[test]
fn sigkill_of_a_cheap_task_in_batches_leaves_every_result_exactly_once() {
    const NAME: &str = "sigkill_of_a_cheap_task_in_batches_leaves_every_result_exactly_once";
    if child_role().as_deref() == Some("child") {
        return child(CHEAP);
    }
    torture(NAME, CHEAP);
}

#[test]
fn sigkill_of_a_cheap_task_with_keep_order_leaves_the_results_in_input_order() {
    const NAME: &str = "sigkill_of_a_cheap_task_with_keep_order_leaves_the_results_in_input_order";
    let job = Job {
        keep_order: true,
        ..CHEAP
    };
    if child_role().as_deref() == Some("child") {
        return child(job);
    }
    torture(NAME, job);
}
