// The console: a hash router over pages that read and change the system only through the public REST API.

import { api, ApiError, events, session } from './api.js';
import { lineChart } from './charts.js';
import { append, bytes, clear, confirmAction, enc, fill, h, link, table, time, toast } from './dom.js';

const view = document.getElementById('view');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let me = null; // {principal, role, permissions}
let page = null; // {controller, timers}

const may = (permission) => Boolean(me && me.permissions.includes(permission));

function setTitle(title) {
  document.title = `${title} · LMaaS console`;
  view.append(h('h1', {}, title));
}

function failure(error) {
  const text = error instanceof ApiError ? `${error.status} ${error.problem.code || ''}: ${error.message}` : String(error);
  return h('p', { class: 'error', role: 'alert' }, text);
}

function shortDigest(digest) {
  return h('code', { title: digest }, digest ? `${digest.slice(0, 12)}…` : '—');
}

function specText(spec) {
  if (!spec || !spec.stable_version) return 'not served';
  let text = `v${spec.stable_version}`;
  if (spec.canary_version) text += ` + canary v${spec.canary_version} (${spec.canary_weight}%)`;
  if (spec.pools && spec.pools.length) text += ` in ${spec.pools.join(', ')}`;
  return text;
}

function phaseBadge(phase, id) {
  return h('span', { class: `badge ${phase}`, id }, phase);
}

async function orNull(promise) {
  try { return await promise; } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

// -- pages ---------------------------------------------------------------------------------------------------

async function modelsPage(ctx) {
  setTitle('Models');
  const search = h('input', { type: 'search', id: 'search', placeholder: 'Search by name or description' });
  const body = h('div', { id: 'models-table', 'aria-live': 'polite' });
  view.append(h('label', { for: 'search', class: 'sr-only' }, 'Search models'), search, body);
  const rates = new Map();
  let shown = '';
  async function refresh(force = false) {
    const [models, deployments] = await Promise.all([api('GET', '/models', undefined, ctx.signal),
      api('GET', '/deployments', undefined, ctx.signal)]);
    const byModel = new Map(deployments.deployments.map((d) => [d.deployment.model, d]));
    const query = search.value.trim().toLowerCase();
    const found = models.models.filter((m) => !query || m.name.toLowerCase().includes(query)
      || m.description.toLowerCase().includes(query));
    const key = JSON.stringify([found, deployments.deployments.map((d) => [d.deployment.spec, d.rollout.phase]),
      [...rates]]);
    if (key === shown && !force) return;
    shown = key;
    fill(body, table('Models', ['Model', 'Latest version', 'Serving', 'Rollout', 'Requests/s', 'Description'],
      found.map((m) => {
        const d = byModel.get(m.name);
        return [
          link(`#/models/${enc(m.name)}`, m.name, { class: 'model-link', dataset: { model: m.name } }),
          m.latest_version ? `v${m.latest_version}` : '—',
          d ? specText(d.deployment.spec) : 'not deployed',
          d ? link(`#/rollout/${enc(m.name)}`, d.rollout.phase, { class: `badge ${d.rollout.phase}` }) : '—',
          rates.has(m.name) ? rates.get(m.name).toFixed(2) : '—',
          m.description,
        ];
      }), query ? 'No model matches.' : 'No models yet: push one with `lmaas model push NAME FILE`.'));
    return byModel;
  }
  async function refreshRates() {
    const deployments = await api('GET', '/deployments', undefined, ctx.signal);
    await Promise.all(deployments.deployments.map(async (d) => {
      const stats = await orNull(api('GET', `/models/${enc(d.deployment.model)}/statistics`, undefined, ctx.signal));
      if (!stats) return;
      const rate = stats.versions.reduce((sum, v) => sum + (v.points.length ? v.points[v.points.length - 1].requests_per_s : 0), 0);
      rates.set(d.deployment.model, rate);
    }));
    await refresh();
  }
  search.addEventListener('input', () => refresh(true));
  ctx.every(refresh, 2000);
  ctx.every(refreshRates, 10000);
}

function lineage(versions) {
  const byNumber = new Map(versions.map((v) => [v.version, v]));
  const chain = (v) => {
    const out = [];
    const seen = new Set();
    for (let cur = v; cur && !seen.has(cur.version); cur = byNumber.get(cur.parent_version)) {
      seen.add(cur.version);
      out.unshift(`v${cur.version}`);
      if (!cur.parent_version) break;
    }
    return out;
  };
  // depth-first order: each derived version under its parent
  const children = new Map();
  for (const v of versions) {
    const parent = byNumber.has(v.parent_version) ? v.parent_version : 0;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(v);
  }
  const ordered = [];
  const walk = (parent, depth) => {
    for (const v of (children.get(parent) || []).sort((a, b) => b.version - a.version)) {
      ordered.push({ v, depth, chain: chain(v) });
      walk(v.version, depth + 1);
    }
  };
  walk(0, 0);
  return ordered;
}

function recipe(v) {
  // what `lmaas model optimize` recorded for a derived version: recipe, measured speed-up, size and accuracy
  const d = v.derivation;
  if (!d) return '';
  const params = Object.entries(d.params || {}).map(([k, x]) => `${k}=${x}`).join(', ');
  const parts = [`recipe ${d.recipe}${params ? ` (${params})` : ''}`];
  if (d.speed && d.speed.length) {
    parts.push(`speed-up ${d.speed.map((m) => `×${m.speedup.toFixed(2)} at batch ${m.batch}`).join(', ')}`);
  }
  if (d.parent_size_bytes) parts.push(`size ${bytes(d.size_bytes)} (parent ${bytes(d.parent_size_bytes)})`);
  if (d.accuracy) {
    const a = d.accuracy;
    let text = `accuracy vs ${a.reference}: max rel. error ${a.max_rel_error.toPrecision(2)} on ${a.samples} samples`;
    if (a.top1_agreement !== null && a.top1_agreement !== undefined) text += `, top-1 agreement ${(a.top1_agreement * 100).toFixed(1)}%`;
    parts.push(text);
  }
  if (d.merged_versions && d.merged_versions.length) parts.push(`merges ${d.merged_versions.map((n) => `v${n}`).join(', ')}`);
  return parts.join(' · ');
}

async function deployAction(name, body, text, title) {
  if (!(await confirmAction(title, text, title))) return;
  try {
    const state = await api('PUT', `/deployments/${enc(name)}`, body);
    toast(`${title}: generation ${state.deployment.generation} is rolling out`);
    location.hash = `#/rollout/${enc(name)}?generation=${state.deployment.generation}`;
  } catch (error) {
    toast(`${title} refused: ${error.message}`, 'error');
  }
}

async function modelPage(ctx, name) {
  setTitle(`Model ${name}`);
  const info = h('section', { id: 'model-info', 'aria-label': 'Model' });
  const serving = h('section', { id: 'deployment', 'aria-labelledby': 'dep-h' });
  const charts = h('section', { id: 'charts', 'aria-labelledby': 'charts-h' });
  const versionsBox = h('section', { id: 'versions', 'aria-labelledby': 'ver-h' });
  const historyBox = h('section', { id: 'history', 'aria-labelledby': 'hist-h' });
  view.append(info, serving, h('h2', { id: 'charts-h' }, 'Traffic'), charts, versionsBox, historyBox);
  let shown = '';
  async function refresh() {
    const [model, versions, dep] = await Promise.all([
      api('GET', `/models/${enc(name)}`, undefined, ctx.signal),
      api('GET', `/models/${enc(name)}/versions`, undefined, ctx.signal),
      orNull(api('GET', `/deployments/${enc(name)}`, undefined, ctx.signal)),
    ]);
    const key = JSON.stringify([model, versions.versions, dep && dep.deployment, dep && dep.rollout.phase]);
    if (key === shown) return;
    shown = key;
    const spec = dep ? dep.deployment.spec : null;
    const llm = versions.versions.some((v) => v.format === 'llm');
    fill(info, 
      h('p', {}, model.description || 'No description.'),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Created'), h('dd', {}, time(model.created_at_ms), ' by ', model.created_by || '—'),
        Object.entries(model.metadata).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
      llm && may('deploy') ? h('p', {}, link(`#/chat/${enc(name)}`, 'Open the playground', { id: 'playground-link' })) : null,
    );
    fill(serving, h('h2', { id: 'dep-h' }, 'Deployment'));
    if (dep) {
      append(serving, [h('p', {}, 'Serving ', h('strong', { id: 'serving' }, specText(spec)), ' · generation ',
        String(dep.deployment.generation), ' · rollout ',
        link(`#/rollout/${enc(name)}`, dep.rollout.phase, { class: `badge ${dep.rollout.phase}`, id: 'rollout-link' }))]);
    } else {
      serving.append(h('p', {}, 'Not deployed.'));
    }
    if (may('deploy') && versions.versions.length) {
      const options = versions.versions.map((v) => h('option', { value: v.version }, `v${v.version}`)).reverse();
      const canaryVersion = h('select', { id: 'canary-version' }, options);
      const weight = h('input', { type: 'number', id: 'canary-weight', min: 0, max: 100, value: spec && spec.canary_weight ? spec.canary_weight : 10 });
      const canaryForm = h('form', { class: 'inline', id: 'canary-form' },
        h('label', { for: 'canary-version' }, 'Canary version'), canaryVersion,
        h('label', { for: 'canary-weight' }, 'Weight %'), weight,
        h('button', { type: 'submit', id: 'set-canary', disabled: !spec || !spec.stable_version }, 'Set canary'));
      canaryForm.addEventListener('submit', (event) => {
        event.preventDefault();
        const c = Number(canaryVersion.value);
        const w = Number(weight.value);
        deployAction(name, { version: spec.stable_version, canary: { version: c, weight: w }, pools: spec.pools },
          `${name}: send ${w}% of requests that name no version to canary v${c}; stable stays v${spec.stable_version}`
          + (spec.canary_version && spec.canary_version !== c ? ` (replaces canary v${spec.canary_version})` : '') + '.',
          'Set canary');
      });
      serving.append(canaryForm);
      if (dep) {
        const previous = [...dep.deployment.history].slice(0, -1).reverse().find((r) => !r.failed && r.spec.stable_version);
        const rollback = h('button', { type: 'button', id: 'rollback', class: 'danger' }, 'Roll back');
        rollback.addEventListener('click', async () => {
          const target = previous ? specText(previous.spec) : 'the previous good deployment';
          if (!(await confirmAction('Roll back', `${name}: stop serving ${specText(spec)} and serve ${target} again.`, 'Roll back'))) return;
          try {
            const state = await api('POST', `/deployments/${enc(name)}/rollback`, {});
            location.hash = `#/rollout/${enc(name)}?generation=${state.deployment.generation}`;
          } catch (error) { toast(`Roll back refused: ${error.message}`, 'error'); }
        });
        serving.append(rollback);
      }
    }
    const rows = lineage(versions.versions).map(({ v, depth, chain }) => {
      const actions = [];
      if (may('deploy')) {
        const button = h('button', { type: 'button', class: 'deploy', dataset: { version: v.version },
          'aria-label': `Deploy v${v.version}` }, 'Deploy');
        button.addEventListener('click', () => {
          let text = `${name}: serve v${v.version} as the stable version`;
          if (spec && spec.stable_version) text += `, replacing v${spec.stable_version}`;
          if (spec && spec.canary_version) text += `; the canary v${spec.canary_version} (${spec.canary_weight}%) is removed`;
          deployAction(name, { version: v.version, pools: spec ? spec.pools : [] }, `${text}.`, `Deploy v${v.version}`);
        });
        actions.push(button);
      }
      const role = spec && spec.stable_version === v.version ? 'stable'
        : spec && spec.canary_version === v.version ? `canary ${spec.canary_weight}%` : '';
      return [
        h('span', { class: `depth d${Math.min(depth, 5)}`, id: `version-${v.version}` }, `v${v.version}`,
          role ? h('span', { class: 'badge succeeded' }, role) : null),
        chain.join(' → '), v.format, bytes(v.size_bytes), shortDigest(v.digest), v.created_by, time(v.created_at_ms),
        [v.description, recipe(v) ? h('div', { class: 'recipe' }, recipe(v)) : null], actions,
      ];
    });
    fill(versionsBox, h('h2', { id: 'ver-h' }, 'Versions'),
      table('Versions', ['Version', 'Lineage', 'Format', 'Size', 'Digest', 'Creator', 'Created', 'Description', ''],
        rows, 'No versions yet.'));
    fill(historyBox, h('h2', { id: 'hist-h' }, 'Deployment history'));
    historyBox.append(dep ? table('Deployment history', ['Generation', 'Reason', 'Spec', 'By', 'When', 'Result'],
      [...dep.deployment.history].reverse().map((r) => [String(r.generation), r.reason, specText(r.spec), r.created_by,
        time(r.created_at_ms), r.failed ? h('span', { class: 'badge failed' }, `failed ${r.message}`) : (r.message || 'ok')]))
      : h('p', {}, 'Never deployed.'));
  }
  async function refreshCharts() {
    const stats = await api('GET', `/models/${enc(name)}/statistics`, undefined, ctx.signal);
    const line = (v, field, suffix = '') => ({ label: `v${v.version}${suffix}`,
      points: v.points.filter((p) => p[field] !== null && p[field] !== undefined).map((p) => [p.time_ms, p[field]]) });
    const series = (field) => stats.versions.map((v) => line(v, field));
    const has = (field) => stats.versions.some((v) => v.points.some((p) => p[field] !== null && p[field] !== undefined));
    const source = stats.source === 'prometheus'
      ? `From Prometheus (a point every ${stats.sample_every_s} s, rates over 1 min).`
      : `Rates sampled every ${stats.sample_every_s} s from the workers' OIP statistics while this page is open; `
        + 'percentiles from the control plane\'s aggregation of the latency histograms the workers report (1 min windows).';
    fill(charts,
      lineChart('Requests', 'req/s', series('requests_per_s')),
      lineChart('Errors', 'err/s', series('errors_per_s')),
      has('p50_latency_ms')
        ? lineChart('Latency p50 / p99', 'ms', stats.versions.flatMap((v) => [line(v, 'p50_latency_ms', ' p50'), line(v, 'p99_latency_ms', ' p99')]))
        : lineChart('Mean latency', 'ms', series('mean_latency_ms')),
      has('ttft_p50_ms') ? lineChart('Time to first token p50', 'ms', series('ttft_p50_ms')) : null,
      has('tokens_per_s') ? lineChart('Generated tokens', 'tokens/s', series('tokens_per_s')) : null,
      h('p', { class: 'note', id: 'charts-source' }, source,
        stats.unreachable.length ? ` Unreachable: ${stats.unreachable.join(', ')}.` : ''),
    );
  }
  ctx.every(refresh, 2000);
  ctx.every(refreshCharts, 5000);
}

async function rolloutPage(ctx, name, params) {
  setTitle(`Rollout ${name}`);
  const status = h('div', { id: 'rollout', 'aria-live': 'polite' });
  const finished = h('p', { id: 'stream-state', class: 'note' }, 'Following live…');
  view.append(h('p', {}, link(`#/models/${enc(name)}`, `← Model ${name}`)), status, finished);
  const generation = Number(params.get('generation') || 0);
  const render = (r) => {
    fill(status, 
      h('p', {}, 'Generation ', h('strong', { id: 'rollout-generation' }, String(r.generation)), ' · ', r.reason || 'deploy',
        ' · ', specText(r.spec), ' · ', phaseBadge(r.phase, 'rollout-phase')),
      r.message ? h('p', { id: 'rollout-message', class: r.phase === 'failed' ? 'error' : '' }, r.message) : null,
      r.restored_generation ? h('p', {}, `Generation ${r.restored_generation} restored the previous state.`) : null,
      table('Workers', ['Worker', 'State', 'Error'], r.workers.map((w) => [
        h('span', { class: 'worker-id' }, w.worker_id),
        h('span', { class: `badge ${w.state}`, dataset: { worker: w.worker_id }, id: `state-${w.worker_id}` }, w.state),
        h('span', { class: 'worker-error', dataset: { worker: w.worker_id } }, w.error)]), 'No worker serves this model yet.'),
    );
  };
  try {
    for await (const message of events('GET', `/deployments/${enc(name)}/rollout/events?generation=${generation}`, undefined, ctx.signal)) {
      if (message.event === 'rollout') render(message.data);
    }
    finished.textContent = 'Rollout finished.';
  } catch (error) {
    if (ctx.signal.aborted) return;
    fill(status, failure(error));
    finished.textContent = '';
  }
}

// Used / capacity as text and as a meter (labelled for screen readers); '—' for a worker that reports none.
function memoryCell(w) {
  if (!w.memory_capacity_bytes) return '—';
  const share = Math.min(1, w.memory_used_bytes / w.memory_capacity_bytes);
  return h('div', { class: 'memory', dataset: { worker: w.worker_id } },
    h('span', { class: 'memory-text' }, `${bytes(w.memory_used_bytes)} / ${bytes(w.memory_capacity_bytes)}`),
    h('meter', { min: 0, max: 1, low: 0.75, high: 0.9, optimum: 0, value: share.toFixed(3),
      'aria-label': `${w.worker_id} uses ${Math.round(share * 100)} % of its memory` }));
}

async function workersPage(ctx) {
  setTitle('Workers');
  const body = h('div', { id: 'workers-table' });
  view.append(body);
  let shown = '';
  ctx.every(async () => {
    const list = await api('GET', '/workers', undefined, ctx.signal);
    const key = JSON.stringify(list.workers);
    if (key === shown) return;
    shown = key;
    fill(body, table('Workers', ['Worker', 'Pool', 'Inference address', 'Control plane', 'Connected',
      'Revision (sent / acked)', 'Memory (used / capacity)', 'Holds (measured memory)', 'Acknowledged'],
    list.workers.map((w) => [
      w.worker_id, w.pool, h('code', {}, w.inference_address), w.control_plane, time(w.connected_at_ms),
      `${w.desired_revision} / ${w.acked_revision}`,
      memoryCell(w),
      w.held.length ? h('ul', { class: 'held' }, w.held.map((x) => h('li', { dataset: { model: x.model, version: x.version } },
        `${x.model} v${x.version}`, h('span', { class: 'note' }, x.memory_bytes
          ? ` ${bytes(x.memory_bytes)} (peak ${bytes(x.memory_peak_bytes)})` : ' not measured')))) : '—',
      w.models.map((m) => h('div', { class: m.ok ? '' : 'error' },
        `${m.model} gen ${m.generation}: ${m.ok ? 'ack' : `nack ${m.error}`}`)),
    ]), 'No worker is connected.'));
  }, 3000);
}

async function tokensPage(ctx) {
  setTitle('Tokens');
  if (!may('admin')) { view.append(h('p', {}, 'Only an admin token may list and create tokens.')); return; }
  const role = h('select', { id: 'token-role' }, ['reader', 'deployer', 'worker', 'admin'].map((r) => h('option', { value: r }, r)));
  const description = h('input', { id: 'token-description', maxlength: 256, placeholder: 'whose, what for' });
  const created = h('div', { id: 'token-created', 'aria-live': 'polite' });
  const form = h('form', { class: 'inline', id: 'token-form' },
    h('label', { for: 'token-role' }, 'Role'), role, h('label', { for: 'token-description' }, 'Description'), description,
    h('button', { type: 'submit', class: 'primary' }, 'Create token'));
  const list = h('div', { id: 'tokens-table' });
  view.append(form, created, list);
  async function refresh() {
    const tokens = await api('GET', '/tokens?include_revoked=true', undefined, ctx.signal);
    fill(list, table('Tokens', ['Id', 'Role', 'Description', 'Created', 'By', 'Revoked', ''],
      tokens.tokens.map((t) => {
        const revoke = t.revoked_at_ms ? null : h('button', { type: 'button', class: 'danger', 'aria-label': `Revoke ${t.id}` }, 'Revoke');
        if (revoke) {
          revoke.addEventListener('click', async () => {
            if (!(await confirmAction('Revoke token', `Revoke token ${t.id} (${t.role}: ${t.description || 'no description'}); it stops working at once.`, 'Revoke'))) return;
            try { await api('DELETE', `/tokens/${enc(t.id)}`); toast(`Token ${t.id} revoked`); await refresh(); } catch (error) { toast(error.message, 'error'); }
          });
        }
        return [h('code', {}, t.id), t.role, t.description, time(t.created_at_ms), t.created_by,
          t.revoked_at_ms ? [time(t.revoked_at_ms), ' by ', t.revoked_by] : '—', revoke];
      })));
  }
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const answer = await api('POST', '/tokens', { role: role.value, description: description.value });
      fill(created, h('p', { class: 'secret' }, `New ${answer.token.role} token (shown once, copy it now): `,
        h('code', { id: 'token-secret' }, answer.secret)));
      description.value = '';
      await refresh();
    } catch (error) { toast(error.message, 'error'); }
  });
  await refresh();
}

async function auditPage(ctx) {
  setTitle('Audit trail');
  if (!may('admin')) { view.append(h('p', {}, 'Only an admin token may read the audit trail.')); return; }
  const whoInput = h('input', { id: 'audit-who', placeholder: 'token:…' });
  const what = h('input', { id: 'audit-what', placeholder: 'Deploy, CreateToken…' });
  const result = h('select', { id: 'audit-result' }, h('option', { value: '' }, 'any'), h('option', { value: 'OK' }, 'OK'),
    h('option', { value: 'error' }, 'errors and denials'));
  const body = h('div', { id: 'audit-table' });
  const more = h('button', { type: 'button', id: 'audit-more' }, 'Load older entries');
  const entries = [];
  let cursor = '';
  const render = () => {
    const w = whoInput.value.trim().toLowerCase();
    const m = what.value.trim().toLowerCase();
    const shown = entries.filter((e) => (!w || e.principal.toLowerCase().includes(w))
      && (!m || e.method.toLowerCase().includes(m) || e.request.toLowerCase().includes(m))
      && (!result.value || (result.value === 'OK' ? e.code === 'OK' : e.code !== 'OK')));
    fill(body, table('Audit trail', ['When', 'Who', 'Role', 'What', 'Request', 'Result', 'Peer'],
      shown.map((e) => [time(e.time_ms), e.principal, e.role, e.method.split('/').pop(), h('code', {}, e.request),
        e.code === 'OK' ? 'OK' : h('span', { class: 'error' }, `${e.code} ${e.message}`), e.peer]), 'No entry matches.'));
  };
  const load = async () => {
    const page = await api('GET', `/audit?limit=100${cursor ? `&before=${enc(cursor)}` : ''}`, undefined, ctx.signal);
    entries.push(...page.entries);
    cursor = page.next || '';
    more.hidden = !cursor;
    render();
  };
  for (const input of [whoInput, what, result]) input.addEventListener('input', render);
  more.addEventListener('click', load);
  view.append(h('form', { class: 'inline', role: 'search' },
    h('label', { for: 'audit-who' }, 'Who'), whoInput, h('label', { for: 'audit-what' }, 'What'), what,
    h('label', { for: 'audit-result' }, 'Result'), result), body, more);
  await load();
}

async function chatPage(ctx, name) {
  setTitle(`Playground ${name}`);
  if (!may('deploy')) { view.append(h('p', {}, 'The playground needs a deployer or admin token.')); return; }
  const [versions, dep] = await Promise.all([api('GET', `/models/${enc(name)}/versions`, undefined, ctx.signal),
    orNull(api('GET', `/deployments/${enc(name)}`, undefined, ctx.signal))]);
  const spec = dep ? dep.deployment.spec : null;
  const label = (v) => (spec && spec.stable_version === v ? ' (stable)' : spec && spec.canary_version === v ? ' (canary)' : '');
  const choices = (id, none) => h('select', { id },
    h('option', { value: none ? 'none' : '0' }, none ? '— none —' : 'as routed (stable or canary)'),
    versions.versions.filter((v) => v.format === 'llm').reverse().map((v) => h('option', { value: v.version }, `v${v.version}${label(v.version)}`)));
  const a = choices('version-a', false);
  const b = choices('version-b', true);
  if (spec && spec.canary_version) { a.value = String(spec.stable_version); b.value = String(spec.canary_version); }
  const mode = h('select', { id: 'mode' }, h('option', { value: 'chat' }, 'Chat (the version\'s chat template)'),
    h('option', { value: 'completion' }, 'Completion (the prompt as it is)'));
  const system = h('input', { id: 'system', placeholder: 'optional system message', size: 60 });
  const prompt = h('textarea', { id: 'prompt', rows: 4, required: true }, 'What is the capital of France?');
  const maxTokens = h('input', { id: 'max-tokens', type: 'number', min: 1, max: 4096, value: 32 });
  const temperature = h('input', { id: 'temperature', type: 'number', min: 0, max: 2, step: 0.1, value: 0 });
  const send = h('button', { type: 'submit', id: 'send', class: 'primary' }, 'Send');
  const restart = h('button', { type: 'button', id: 'new-chat' }, 'New conversation');
  // Each pane keeps its own conversation: the user's turns are shared, each version's answers are its own.
  const pane = (id, title) => h('section', { class: 'pane', 'aria-labelledby': `${id}-h` }, h('h2', { id: `${id}-h` }, title),
    h('ol', { id: `log-${id}`, class: 'transcript', 'aria-label': `Conversation ${title}` }),
    h('p', { id: `ask-${id}`, class: 'turn user' }),
    h('pre', { id: `out-${id}`, class: 'output', 'aria-live': 'polite' }), h('p', { id: `stats-${id}`, class: 'note' }));
  const panes = h('div', { class: 'panes' }, pane('a', 'A'), pane('b', 'B'));
  const history = { a: [], b: [] }; // [{role, content}] of the finished turns, per pane
  const last = { a: null, b: null }; // the turn on screen: {user, reply, ok}
  const reset = () => {
    for (const id of ['a', 'b']) {
      history[id] = []; last[id] = null;
      for (const part of ['log', 'ask', 'out', 'stats']) clear(document.getElementById(`${part}-${id}`));
    }
  };
  restart.addEventListener('click', reset);
  for (const control of [mode, system, a, b]) control.addEventListener('change', reset); // another conversation
  // The turn on screen moves up into the transcript (and, when it succeeded, into the conversation) before the next.
  const archive = (id) => {
    const turn = last[id];
    last[id] = null;
    if (!turn) return;
    const log = document.getElementById(`log-${id}`);
    log.append(h('li', { class: 'turn user' }, h('strong', {}, 'You: '), turn.user),
      h('li', { class: turn.ok ? 'turn assistant' : 'turn error' }, h('strong', {}, 'Model: '), turn.reply));
    if (turn.ok) history[id].push({ role: 'user', content: turn.user }, { role: 'assistant', content: turn.reply });
    while (history[id].length > 60) history[id].splice(0, 2); // the route takes 64 messages at most
  };
  const form = h('form', { id: 'chat-form' },
    h('div', { class: 'inline' }, h('label', { for: 'mode' }, 'Mode'), mode, h('label', { for: 'system' }, 'System'), system),
    h('label', { for: 'prompt' }, 'Message'), prompt,
    h('div', { class: 'inline' }, h('label', { for: 'version-a' }, 'A'), a, h('label', { for: 'version-b' }, 'B'), b,
      h('label', { for: 'max-tokens' }, 'Max tokens'), maxTokens, h('label', { for: 'temperature' }, 'Temperature'), temperature, send,
      restart));
  view.append(h('p', {}, link(`#/models/${enc(name)}`, `← Model ${name}`)), form, panes);
  const run = async (id, version, text) => {
    const out = document.getElementById(`out-${id}`);
    const stats = document.getElementById(`stats-${id}`);
    const chat = mode.value === 'chat';
    if (chat) archive(id); else { clear(document.getElementById(`log-${id}`)); history[id] = []; last[id] = null; }
    document.getElementById(`ask-${id}`).textContent = chat ? `You: ${text}` : '';
    out.textContent = '';
    stats.textContent = 'streaming…';
    const turn = { user: text, reply: '', ok: false };
    try {
      const body = { version: Number(version), max_tokens: Number(maxTokens.value), temperature: Number(temperature.value) };
      if (chat) {
        body.messages = [...(system.value.trim() ? [{ role: 'system', content: system.value }] : []), ...history[id],
          { role: 'user', content: text }];
      } else body.prompt = text;
      for await (const message of events('POST', `/models/${enc(name)}/generate`, body, ctx.signal)) {
        if (message.event === 'token') { out.append(document.createTextNode(message.data.text)); turn.reply += message.data.text; }
        else if (message.event === 'done') {
          const d = message.data;
          turn.ok = true;
          stats.textContent = `v${d.version} on ${d.worker} · ${d.tokens} tokens · ${d.finish_reason}`
            + (d.ttft_ms !== null ? ` · TTFT ${d.ttft_ms} ms` : '') + (d.tokens_per_s !== null ? ` · ${d.tokens_per_s} tokens/s` : '')
            + (chat ? ` · turn ${history[id].length / 2 + 1}, ${d.messages} message${d.messages === 1 ? '' : 's'} sent` : '');
        } else if (message.event === 'error') stats.textContent = `${message.data.code}: ${message.data.detail}`;
      }
    } catch (error) {
      if (!ctx.signal.aborted) stats.textContent = error.message;
    }
    if (chat) last[id] = turn;
  };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    send.disabled = true;
    const text = prompt.value;
    const jobs = [run('a', a.value, text)];
    if (b.value !== 'none') jobs.push(run('b', b.value, text));
    else { for (const part of ['log', 'ask', 'out', 'stats']) clear(document.getElementById(`${part}-b`)); }
    await Promise.all(jobs);
    send.disabled = false;
    if (mode.value === 'chat') { prompt.value = ''; prompt.focus(); } // the next turn
  });
}

function loginPage(message) {
  document.title = 'Sign in · LMaaS console';
  nav.hidden = true;
  clear(who);
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('p', { id: 'login-error', class: 'error', role: 'alert' }, message || '');
  const form = h('form', { id: 'login', class: 'card' }, h('h1', {}, 'Sign in'),
    h('p', {}, 'Paste an LMaaS token (lmaas up writes the admin token to STATE/admin.token). It stays in this tab only.'),
    h('label', { for: 'token' }, 'Token'), input, h('button', { type: 'submit', class: 'primary', id: 'login-submit' }, 'Sign in'), error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    session.set(input.value.trim());
    if (await identify()) route(); else { session.clear(); error.textContent = 'That token was refused.'; }
  });
  fill(view, form);
  input.focus();
}

// -- shell ---------------------------------------------------------------------------------------------------

async function identify() {
  try { me = await api('GET', '/whoami'); } catch { me = null; }
  if (!me) return false;
  fill(nav, 
    link('#/models', 'Models'), link('#/workers', 'Workers'),
    may('admin') ? link('#/tokens', 'Tokens') : null, may('admin') ? link('#/audit', 'Audit') : null);
  nav.hidden = false;
  const out = h('button', { type: 'button', id: 'logout' }, 'Sign out');
  out.addEventListener('click', () => { session.clear(); me = null; location.hash = '#/models'; loginPage('Signed out.'); });
  fill(who, h('span', { id: 'whoami' }, `${me.principal} · ${me.role}`), ' ', out);
  return true;
}

const ROUTES = [
  [/^\/models\/?$/, modelsPage],
  [/^\/models\/([^/]+)$/, modelPage],
  [/^\/rollout\/([^/]+)$/, rolloutPage],
  [/^\/workers$/, workersPage],
  [/^\/tokens$/, tokensPage],
  [/^\/audit$/, auditPage],
  [/^\/chat\/([^/]+)$/, chatPage],
];

function leave() {
  if (!page) return;
  page.controller.abort();
  page.timers.forEach(clearInterval);
  page = null;
}

async function route() {
  leave();
  if (!me) { loginPage(); return; }
  const [path, query] = (location.hash.replace(/^#/, '') || '/models').split('?');
  const params = new URLSearchParams(query || '');
  const controller = new AbortController();
  const current = { controller, timers: [] };
  page = current;
  const ctx = {
    signal: controller.signal,
    every: (fn, ms) => {
      const tick = () => fn().catch((error) => { if (!controller.signal.aborted) toast(error.message, 'error'); });
      current.timers.push(setInterval(tick, ms));
      return tick();
    },
  };
  clear(view);
  view.focus({ preventScroll: true }); // screen readers start at the new page
  for (const a of nav.querySelectorAll('a')) {
    if (path.startsWith(a.getAttribute('href').slice(1))) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) { setTitle('Not found'); return; }
  const args = path.match(found[0]).slice(1).map(decodeURIComponent);
  try {
    await found[1](ctx, ...args, params);
  } catch (error) {
    if (!controller.signal.aborted) view.append(failure(error));
  }
}

window.addEventListener('hashchange', route);
window.addEventListener('lmaas:unauthenticated', () => {
  if (!me) return; // signing in: the login form reports it
  me = null; leave(); loginPage('Your token is no longer accepted.'); });
(async () => {
  // --no-auth control planes answer whoami without a token
  if (await identify()) route(); else { session.clear(); loginPage(); }
})();
