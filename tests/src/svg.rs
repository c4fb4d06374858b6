//! The benchmark charts' SVG (`mptcp-bench`, `mptcp-flood`): a drawing of text, bars and lines
//! in 11 px sans-serif, written as the elements are added.

use std::fmt::{Display, Write as _};

/// An SVG drawing being written.
pub struct Svg(String);

impl Svg {
    /// A `width` x `height` drawing.
    #[must_use]
    pub fn new(width: f64, height: f64) -> Self {
        Self(format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        ))
    }

    /// A 13 px heading whose baseline is at `y`.
    pub fn heading(&mut self, y: f64, text: impl Display) {
        self.text(10.0, y, r#"font-size="13""#, text);
    }

    /// `text` with its baseline starting at (`x`, `y`); `attrs` are more attributes, e.g.
    /// `text-anchor="end"` (empty for none).
    pub fn text(&mut self, x: f64, y: f64, attrs: &str, text: impl Display) {
        let sep = if attrs.is_empty() { "" } else { " " };
        let _ = write!(
            self.0,
            r#"<text x="{x:.1}" y="{y:.1}"{sep}{attrs}>{text}</text>"#
        );
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, fill: &str) {
        let _ = write!(
            self.0,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" fill="{fill}"/>"#
        );
    }

    /// A horizontal line from `x1` to `x2` at `y`.
    pub fn hline(&mut self, x1: f64, x2: f64, y: f64, stroke: &str) {
        let _ = write!(
            self.0,
            r#"<line x1="{x1:.1}" x2="{x2:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{stroke}"/>"#
        );
    }

    /// The finished document.
    #[must_use]
    pub fn finish(mut self) -> String {
        self.0.push_str("</svg>\n");
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Svg;

    #[test]
    fn elements_are_written_in_order() {
        let mut svg = Svg::new(100.0, 50.0);
        svg.heading(16.0, "title");
        svg.text(94.0, 30.0, r#"text-anchor="end""#, "row");
        svg.rect(100.0, 20.0, 12.34, 8.0, "#999");
        svg.hline(1.0, 2.0, 3.0, "#333");
        assert_eq!(
            svg.finish(),
            concat!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50" font-family="sans-serif" font-size="11">"#,
                r#"<text x="10.0" y="16.0" font-size="13">title</text>"#,
                r#"<text x="94.0" y="30.0" text-anchor="end">row</text>"#,
                r##"<rect x="100.0" y="20.0" width="12.3" height="8.0" fill="#999"/>"##,
                r##"<line x1="1.0" x2="2.0" y1="3.0" y2="3.0" stroke="#333"/>"##,
                "</svg>\n"
            )
        );
    }
}
