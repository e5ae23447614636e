// SPDX-License-Identifier: MIT OR Apache-2.0
//! Minimal hand-written SVG charts: a line chart and a grouped bar chart on a log axis.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub values: Vec<f64>,
    /// Optional (low, high) range per point, drawn as a vertical whisker.
    pub ranges: Vec<Option<(f64, f64)>>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(out: &mut String, title: &str, y_label: &str, x_label: &str) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        esc(title)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        esc(y_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0,
        esc(x_label)
    );
}

fn legend(out: &mut String, entries: &[(String, &str, bool)]) {
    for (i, (name, color, dashed)) in entries.iter().enumerate() {
        let y = TOP + 10.0 + 22.0 * i as f64;
        let x = W - RIGHT + 20.0;
        let dash = if *dashed {
            r#" stroke-dasharray="4,3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0,
            esc(name)
        );
    }
}

fn nice_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

/// A line chart over categorical x positions, linear y from 0.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[String],
    series: &[Series],
) -> String {
    let mut out = String::new();
    header(&mut out, title, y_label, x_label);
    let max = series
        .iter()
        .flat_map(|s| {
            s.values
                .iter()
                .copied()
                .chain(s.ranges.iter().flatten().map(|r| r.1))
        })
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1.0);
    let step = nice_step(max);
    let top = (max / step).ceil() * step;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let xpos = |i: usize| LEFT + pw * (i as f64 + 0.5) / xs.len().max(1) as f64;
    let ypos = |v: f64| TOP + ph * (1.0 - v / top);
    let mut t = 0.0;
    while t <= top + step / 2.0 {
        let y = ypos(t);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(t)
        );
        t += step;
    }
    for (i, x) in xs.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            xpos(i),
            TOP + ph + 18.0,
            esc(x)
        );
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    for s in series {
        let pts: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| format!("{:.1},{:.1}", xpos(i), ypos(*v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
            pts.join(" "),
            s.color
        );
        for (i, v) in s.values.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>{}: {:.0}</title></circle>"#,
                xpos(i),
                ypos(*v),
                s.color,
                esc(&s.name),
                v
            );
            if let Some(Some((lo, hi))) = s.ranges.get(i) {
                let _ = writeln!(
                    out,
                    r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{}" stroke-width="1.5"/>"#,
                    ypos(*lo),
                    ypos(*hi),
                    s.color,
                    x = xpos(i)
                );
            }
        }
    }
    let entries: Vec<_> = series
        .iter()
        .map(|s| (s.name.clone(), s.color, false))
        .collect();
    legend(&mut out, &entries);
    out.push_str("</svg>\n");
    out
}

/// Grouped bars (one per series in each group) on a log y axis: the bar is the
/// series value (p50), the whisker reaches `ranges[i].1` (p99).
pub fn log_bar_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    groups: &[String],
    series: &[Series],
) -> String {
    let mut out = String::new();
    header(&mut out, title, y_label, x_label);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| {
            s.values
                .iter()
                .copied()
                .chain(s.ranges.iter().flatten().map(|r| r.1))
        })
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor(), hi.log10().ceil());
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let ypos = |v: f64| TOP + ph * (1.0 - (v.max(10f64.powf(d0)).log10() - d0) / (d1 - d0));
    let mut d = d0;
    while d <= d1 + 0.5 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(d);
            if v > 10f64.powf(d1) * 1.01 {
                break;
            }
            let y = ypos(v);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{}"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                if m == 1.0 { "#bbb" } else { "#eee" },
                LEFT - 6.0,
                y + 4.0,
                fmt_num(v)
            );
        }
        d += 1.0;
    }
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    for (g, name) in groups.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + gw * (g as f64 + 0.5),
            TOP + ph + 18.0,
            esc(name)
        );
        for (k, s) in series.iter().enumerate() {
            let Some(v) = s.values.get(g).copied().filter(|v| v.is_finite()) else {
                continue;
            };
            let x = LEFT + gw * g as f64 + gw * 0.1 + bw * k as f64;
            let y = ypos(v);
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: p50 {:.1}</title></rect>"#,
                bw * 0.9,
                (TOP + ph - y).max(0.0),
                s.color,
                esc(&s.name),
                esc(name),
                v
            );
            if let Some(Some((_, p99))) = s.ranges.get(g) {
                let cx = x + bw * 0.45;
                let y99 = ypos(*p99);
                let _ = writeln!(
                    out,
                    r#"<line x1="{cx:.1}" y1="{y:.1}" x2="{cx:.1}" y2="{y99:.1}" stroke="black" stroke-dasharray="3,2"/><line x1="{:.1}" y1="{y99:.1}" x2="{:.1}" y2="{y99:.1}" stroke="black" stroke-width="2"><title>{} {}: p99 {:.1}</title></line>"#,
                    x + bw * 0.15,
                    x + bw * 0.75,
                    esc(&s.name),
                    esc(name),
                    p99
                );
            }
        }
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let mut entries: Vec<_> = series
        .iter()
        .map(|s| (format!("{} p50", s.name), s.color, false))
        .collect();
    entries.push(("p99 (whisker)".into(), "black", true));
    legend(&mut out, &entries);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let s = vec![Series {
            name: "a<b".into(),
            color: "red",
            values: vec![1.0, 10.0, f64::NAN],
            ranges: vec![Some((0.5, 2.0)), None, None],
        }];
        let xs: Vec<String> = ["1", "8", "64"].iter().map(|s| s.to_string()).collect();
        for svg in [
            line_chart("t", "x", "y", &xs, &s),
            log_bar_chart("t", "x", "y", &xs, &s),
        ] {
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
            assert!(svg.contains("a&lt;b"));
            assert!(!svg.contains("NaN"));
        }
    }
}
