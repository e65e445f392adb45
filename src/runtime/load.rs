//! `load`: JSON Lines files (or stdin) through one mapping into the
//! database. Reading and interpreting run on a thread of their own and
//! hand prepared batches to the writer over a bounded channel, so parsing
//! the next batch overlaps writing this one; written batches go back to be
//! freed on the thread that allocated them.

use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::metrics::Metrics;
use crate::pipeline::{Batch, Batcher, DRIFT_SAMPLE};
use crate::sink::{Sink, SinkError};
use crate::source::file::read_lines;

use super::{Stop, Totals, write_with_retry};

/// Why a load did not finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the reader thread panicked")]
    ReaderPanicked,
    #[error(
        "interrupted after {} events in {} batches, all committed; loading the same files \
         again finishes the load (events already loaded change nothing but UPDATE_AUDIT_KEY)",
        .0.events, .0.batches
    )]
    Interrupted(Totals),
}

/// Loads `files` (`-` is standard input) through `sink` in batches of
/// `batch_size` events, each one transaction; `progress` sees the totals
/// after every commit. A stop request ends the load after the batch being
/// written: what was committed stays, the rest was never written.
pub async fn load(
    sink: &mut Sink,
    files: &[PathBuf],
    batch_size: usize,
    stop: &Stop,
    mut progress: impl FnMut(&Totals),
) -> Result<Totals, LoadError> {
    let (sender, mut batches) = tokio::sync::mpsc::channel::<Batch>(2);
    let (spent_sender, spent) = std::sync::mpsc::channel::<Batch>();
    let (files, size) = (files.to_vec(), batch_size.max(1));
    let mut batcher = Batcher::new(sink.plan().clone())
        .preparing(sink.preparer())
        .counting_drift(DRIFT_SAMPLE);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        for file in &files {
            let mut writer_gone = false;
            read_lines(file, |message| {
                batcher.push(message);
                if batcher.len() >= size {
                    // The writer hangs up after a failure it reports, or
                    // when it is told to stop.
                    writer_gone = sender.blocking_send(batcher.take()).is_err();
                    spent.try_iter().for_each(drop);
                }
                if writer_gone {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
            if writer_gone {
                return Ok(());
            }
        }
        if !batcher.is_empty() {
            let _ = sender.blocking_send(batcher.take());
        }
        Ok(())
    });

    let metrics = Metrics::new();
    let mut totals = Totals::default();
    loop {
        let batch = tokio::select! {
            // A requested stop wins over a waiting batch. The reader may be
            // blocked reading standard input: it is left behind, holding
            // nothing that was written.
            biased;
            () = stop.wait() => return Err(LoadError::Interrupted(totals)),
            batch = batches.recv() => batch,
        };
        let Some(batch) = batch else { break };
        let report = write_with_retry(sink, &batch, stop, &metrics).await?;
        totals.add(&batch, &report);
        let _ = spent_sender.send(batch); // the reader may have finished
        progress(&totals);
    }
    reader.join().map_err(|_| LoadError::ReaderPanicked)??;
    Ok(totals)
}
