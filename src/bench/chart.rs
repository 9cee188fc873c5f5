//! `nexus bench --svg FILE`: the run second by second, as an SVG chart (plotters):
//! throughput on top and, when the scenario measures it, latency percentiles below.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

/// One second of a run.
pub struct Second {
    pub done: u64,
    /// (p50, p99) in ms of what completed in that second, when latency is measured.
    pub latency: Option<(f64, f64)>,
}

/// Per-second buckets from `(when since the start, latency)` samples, for the first
/// `seconds` whole seconds (a partial last second would look like a drop).
pub fn seconds_from_samples(samples: &[(Duration, Duration)], seconds: usize) -> Vec<Second> {
    let mut buckets: Vec<Vec<Duration>> = vec![Vec::new(); seconds.max(1)];
    for (at, latency) in samples {
        if let Some(bucket) = buckets.get_mut(at.as_secs() as usize) {
            bucket.push(*latency);
        }
    }
    buckets
        .into_iter()
        .map(|mut b| {
            b.sort();
            let ms = |q| super::percentile(&b, q).as_secs_f64() * 1e3;
            Second {
                done: b.len() as u64,
                latency: (!b.is_empty()).then(|| (ms(0.50), ms(0.99))),
            }
        })
        .collect()
}

pub fn write_svg(path: &Path, title: &str, unit: &str, run: &[Second]) -> anyhow::Result<()> {
    let with_latency = run.iter().any(|s| s.latency.is_some());
    let height = if with_latency { 640 } else { 340 };
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(draw_err)?;
    let secs = run.len().max(1) as f64;
    // Each point sits in the middle of its second.
    let mid = |i: usize| i as f64 + 0.5;
    let done: Vec<(f64, f64)> = run
        .iter()
        .enumerate()
        .map(|(i, s)| (mid(i), s.done as f64))
        .collect();
    if !with_latency {
        draw_panel(&root, secs, unit, &[(unit, BLUE, done)])?;
    } else {
        let (top, bottom) = root.split_vertically(height / 2 - 10);
        draw_panel(&top, secs, unit, &[(unit, BLUE, done)])?;
        let latency = |pick: fn((f64, f64)) -> f64| -> Vec<(f64, f64)> {
            run.iter()
                .enumerate()
                .filter_map(|(i, s)| s.latency.map(|l| (mid(i), pick(l))))
                .collect()
        };
        let lines = [
            ("p50", GREEN, latency(|l| l.0)),
            ("p99", RED, latency(|l| l.1)),
        ];
        draw_panel(&bottom, secs, "latency, ms", &lines)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

/// A labelled line: its name, colour and (second, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One chart: seconds across, `y_desc` up, a labelled line per series.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    secs: f64,
    y_desc: &str,
    lines: &[Line<'_>],
) -> anyhow::Result<()> {
    let top = lines
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
        .fold(0.1, f64::max);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..secs, 0f64..top * 1.1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .y_desc(y_desc)
        .draw()
        .map_err(draw_err)?;
    for (name, color, points) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fall_into_their_second_and_the_svg_has_both_panels() {
        let ms = Duration::from_millis;
        let samples = [
            (ms(100), ms(2)),
            (ms(900), ms(4)),
            (ms(1500), ms(10)),
            (ms(1700), ms(3)),
            (ms(2100), ms(1)), // in the partial third second: not drawn
        ];
        let run = seconds_from_samples(&samples, 2);
        assert_eq!(run.len(), 2);
        assert_eq!(run[0].done, 2);
        assert_eq!(run[1].done, 2);
        assert_eq!(run[0].latency.map(|l| l.1), Some(4.0));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.svg");
        write_svg(&file, "a test run", "round trips/s", &run).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        for text in ["a test run", "round trips/s", "latency, ms", "p99"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
