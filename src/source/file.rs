//! JSON Lines from files or standard input (`-`): one event per line, blank
//! lines skipped, each message numbered by its 1-based line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::Path;

use crate::pipeline::Message;

/// Reads every event of `path` (`-` is standard input) and hands each to
/// `each`, until it says to stop; returns how many bytes were read.
pub fn read_lines(
    path: &Path,
    mut each: impl FnMut(Message) -> ControlFlow<()>,
) -> std::io::Result<u64> {
    let (name, input): (String, Box<dyn Read>) = if path == Path::new("-") {
        ("stdin".to_owned(), Box::new(std::io::stdin().lock()))
    } else {
        (path.display().to_string(), Box::new(File::open(path)?))
    };
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::new();
    let mut number = 0i64;
    let mut bytes = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(bytes);
        }
        bytes += read as u64;
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let flow = each(Message {
            source: name.clone(),
            partition: None,
            position: number,
            key: None,
            payload: line.clone(),
        });
        if flow.is_break() {
            return Ok(bytes);
        }
    }
}
