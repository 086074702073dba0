/**
 * A hand-written SVG bar chart for the load-balancing benchmark: one panel per scenario, one bar
 * per policy, a shared linear y axis, the value above each bar and optionally a dashed target line
 * in a panel. No dependencies; the output is a self-contained SVG file.
 */

/** One bar. */
export interface ChartBar {
  /** Label under the bar (the policy). */
  label: string;
  /** Height; NaN draws no bar and writes "n/a". */
  value: number;
}

/** One panel (a scenario). */
export interface ChartPanel {
  title: string;
  bars: ChartBar[];
  /** A dashed horizontal line, e.g. a target. */
  line?: { value: number; label: string };
}

/** What to draw. */
export interface BarChart {
  title: string;
  /** Lines of small text under the title (settings, date). */
  subtitle: string[];
  /** Label of the y axis. */
  yLabel: string;
  panels: ChartPanel[];
  /** Unit appended to bar values, e.g. " ms". */
  unit?: string;
}

/** A colour per bar position (the same policy has the same colour in every panel). */
const COLOURS = ['#8c8c8c', '#bdbdbd', '#4e79a7', '#76b7b2', '#e15759', '#f28e2b', '#59a14f', '#b07aa1', '#edc948'];

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** A round step for about `targetTicks` ticks between 0 and `max`. */
function niceStep(max: number, targetTicks: number): number {
  const raw = max / targetTicks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * magnitude >= raw) return m * magnitude;
  return 10 * magnitude;
}

function formatValue(v: number): string {
  if (!Number.isFinite(v)) return 'n/a';
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** Renders the chart as an SVG document. */
export function renderBarChart(chart: BarChart): string {
  const unit = chart.unit ?? '';
  const barWidth = 30;
  const barGap = 10;
  const panelGap = 40;
  const left = 70;
  const right = 20;
  const top = 70 + 14 * chart.subtitle.length;
  const plotHeight = 300;
  const labelSpace = 92;
  const bottom = 20;
  const panelWidths = chart.panels.map((p) => p.bars.length * (barWidth + barGap) + barGap);
  const width = left + panelWidths.reduce((a, b) => a + b, 0) + panelGap * (chart.panels.length - 1) + right;
  const height = top + plotHeight + labelSpace + bottom;

  const values = chart.panels.flatMap((p) => [...p.bars.map((b) => b.value), p.line?.value ?? NaN]).filter((v) => Number.isFinite(v));
  const maxValue = Math.max(1e-9, ...values);
  const step = niceStep(maxValue * 1.08, 6);
  const yMax = Math.ceil((maxValue * 1.08) / step) * step;
  const y = (v: number) => top + plotHeight - (v / yMax) * plotHeight;

  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="24" font-size="16" font-weight="bold" fill="#222">${escapeXml(chart.title)}</text>`);
  chart.subtitle.forEach((line, i) => out.push(`<text x="${left}" y="${42 + 14 * i}" font-size="11" fill="#555">${escapeXml(line)}</text>`));

  // Y axis: grid lines and tick labels across the whole width.
  const plotRight = width - right;
  for (let v = 0; v <= yMax + step / 2; v += step) {
    const yy = y(v).toFixed(1);
    out.push(`<line x1="${left}" y1="${yy}" x2="${plotRight}" y2="${yy}" stroke="${v === 0 ? '#444' : '#e3e3e3'}" stroke-width="1"/>`);
    out.push(`<text x="${left - 6}" y="${(y(v) + 4).toFixed(1)}" font-size="11" text-anchor="end" fill="#444">${Number.isInteger(step) ? v.toFixed(0) : formatValue(v)}</text>`);
  }
  const midY = top + plotHeight / 2;
  out.push(`<text x="18" y="${midY}" font-size="12" text-anchor="middle" fill="#333" transform="rotate(-90 18 ${midY})">${escapeXml(chart.yLabel)}</text>`);

  let x0 = left;
  chart.panels.forEach((panel, p) => {
    const w = panelWidths[p];
    out.push(`<text x="${(x0 + w / 2).toFixed(1)}" y="${top - 18}" font-size="13" font-weight="bold" text-anchor="middle" fill="#222">${escapeXml(panel.title)}</text>`);
    if (p > 0) out.push(`<line x1="${x0 - panelGap / 2}" y1="${top}" x2="${x0 - panelGap / 2}" y2="${top + plotHeight}" stroke="#bbb" stroke-dasharray="2,3"/>`);
    if (panel.line && Number.isFinite(panel.line.value)) {
      // Drawn before the bars, so they cover it. The line spans the panel; its label goes under the panel's title, clear of the bars' values.
      const ly = y(panel.line.value).toFixed(1);
      out.push(`<line x1="${x0}" y1="${ly}" x2="${x0 + w}" y2="${ly}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="6,4"/>`);
      out.push(`<text x="${(x0 + w / 2).toFixed(1)}" y="${top - 4}" font-size="10" text-anchor="middle" fill="#d62728">${escapeXml(`- - - ${panel.line.label}`)}</text>`);
    }
    panel.bars.forEach((bar, i) => {
      const bx = x0 + barGap + i * (barWidth + barGap);
      const cx = bx + barWidth / 2;
      if (Number.isFinite(bar.value)) {
        const by = y(bar.value);
        out.push(`<rect x="${bx}" y="${by.toFixed(1)}" width="${barWidth}" height="${(top + plotHeight - by).toFixed(1)}" fill="${COLOURS[i % COLOURS.length]}"><title>${escapeXml(`${panel.title}, ${bar.label}: ${formatValue(bar.value)}${unit}`)}</title></rect>`);
        out.push(`<text x="${cx}" y="${(by - 4).toFixed(1)}" font-size="10" text-anchor="middle" fill="#222">${formatValue(bar.value)}</text>`);
      } else {
        out.push(`<text x="${cx}" y="${top + plotHeight - 4}" font-size="10" text-anchor="middle" fill="#888">n/a</text>`);
      }
      const ly = top + plotHeight + 10;
      out.push(`<text x="${cx}" y="${ly}" font-size="11" text-anchor="end" fill="#333" transform="rotate(-45 ${cx} ${ly})">${escapeXml(bar.label)}</text>`);
    });
    x0 += w + panelGap;
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
