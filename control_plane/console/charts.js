// Small SVG line charts (no library): one line per series, labelled axes, a text summary for screen readers.

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

function format(value) {
  if (value === 0) return '0';
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 1) return value.toFixed(1);
  return value.toPrecision(2);
}

// series: [{label, points: [[timeMs, value], ...]}], drawn over the last windowMs (an hour)
export function lineChart(title, unit, series, windowMs = 3600000) {
  const width = 360;
  const height = 160;
  const pad = { left: 44, right: 8, top: 22, bottom: 22 };
  const all = series.flatMap((s) => s.points);
  const figure = document.createElement('figure');
  figure.className = 'chart';
  const latest = series.map((s) => {
    const last = s.points[s.points.length - 1];
    return `${s.label}: ${last ? format(last[1]) : 'no data'} ${unit}`;
  }).join('; ');
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `${title}. ${latest}` });
  root.append(svg('text', { x: pad.left, y: 14, class: 'chart-title' }, `${title} (${unit})`));
  const t1 = Math.max(Date.now(), ...all.map((p) => p[0]));
  const t0 = t1 - windowMs; // the whole window, so a quiet start reads as quiet, not as a stretched line
  const highest = Math.max(0, ...all.map((p) => p[1]));
  const top = highest > 0 ? highest * 1.1 : 1; // an idle version still gets a readable axis
  const x = (t) => pad.left + ((t - t0) / Math.max(1, t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
  root.append(svg('line', { x1: pad.left, y1: y(0), x2: width - pad.right, y2: y(0), class: 'axis' }));
  root.append(svg('line', { x1: pad.left, y1: pad.top, x2: pad.left, y2: y(0), class: 'axis' }));
  root.append(svg('text', { x: pad.left - 4, y: pad.top + 8, class: 'tick', 'text-anchor': 'end' }, format(top)));
  root.append(svg('text', { x: pad.left - 4, y: y(0), class: 'tick', 'text-anchor': 'end' }, '0'));
  root.append(svg('text', { x: width - pad.right, y: height - 6, class: 'tick', 'text-anchor': 'end' }, 'now'));
  root.append(svg('text', { x: pad.left, y: height - 6, class: 'tick' }, `-${Math.round(windowMs / 60000)} min`));
  if (!all.length) {
    root.append(svg('text', { x: width / 2, y: height / 2, class: 'tick', 'text-anchor': 'middle' },
      'collecting samples…'));
  }
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    root.append(svg('path', { d, class: `line s${i % 6}` }));
    for (const p of s.points) root.append(svg('circle', { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 2.5, class: `dot s${i % 6}` }));
  });
  figure.append(root);
  const legend = document.createElement('figcaption');
  series.forEach((s, i) => {
    const item = document.createElement('span');
    item.className = `legend s${i % 6}`;
    item.textContent = s.label;
    legend.append(item);
  });
  figure.append(legend);
  return figure;
}
