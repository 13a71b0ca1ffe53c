'use strict';

const crypto = require('node:crypto');
/*
 * Real LMaaS servers for the Node tests, run with the repository's Python:
 *
 *   LMAAS_PYTHON   the interpreter (default: ../../.venv/bin/python relative to clients/node)
 *
 * startWorker() builds the standard test model repository with tests/models.py, starts
 * `python -m lmaas.cli worker` on port 0 and reads the bound address from its
 * "listening grpc=HOST:PORT metrics=HOST:PORT" line; stop() ends it by its PID and removes its files.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

const NODE_DIR = path.resolve(__dirname, '..');
const REPO_ROOT = path.resolve(NODE_DIR, '..', '..');
const PYTHON = process.env.LMAAS_PYTHON || path.resolve(NODE_DIR, '..', '..', '.venv', 'bin', 'python');
const LISTENING = /listening grpc=(\S+) metrics=(\S+)/;

/** Run `python args...` from the repository root; resolves its stdout, rejects with its output on failure. */
function runPython(args, { timeoutMs = 300000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(stdout);
      else reject(new Error(`${PYTHON} ${args[0]} ... exited with ${code ?? signal}:\n${stdout}${stderr}`));
    });
  });
}

/** Spawn a server process and wait for its listening line. */
function startServer(args, { tmp = null, env = {}, timeoutMs = 120000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, args, {
      cwd: REPO_ROOT,
      env: { ...process.env, PYTHONUNBUFFERED: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const log = [];
    let pending = '';
    let settled = false;
    const exited = new Promise((done) => child.on('exit', done));
    const server = {
      pid: child.pid,
      grpc: null,
      metrics: null,
      log,
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), 30000);
          await exited;
          clearTimeout(timer);
        }
        if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
      },
    };
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      child.kill('SIGKILL');
      reject(new Error(`server did not start in ${timeoutMs} ms:\n${log.join('\n')}`));
    }, timeoutMs);
    const onData = (chunk) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        log.push(line);
        const match = LISTENING.exec(line);
        if (match && !settled) {
          settled = true;
          clearTimeout(timer);
          [, server.grpc, server.metrics] = match;
          resolve(server);
        }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) => {
      if (!settled) { settled = true; clearTimeout(timer); reject(err); }
    });
    child.on('exit', (code, signal) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        reject(new Error(`server exited with ${code ?? signal} before listening:\n${log.join('\n')}${pending}`));
      }
    });
  });
}

const BUILD_REPOSITORY = `
import json, sys
sys.path.insert(0, "tests")
from pathlib import Path
import numpy as np
import models
models.build_repository(Path(sys.argv[1]))
x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
print(json.dumps(models.mlp_reference(x, seed=0).tolist()))
`;

/**
 * Build the test repository and start a worker on it. `mlpInput` (rows of 4 floats) is run through the
 * reference MLP in Python: the worker's answers are checked against `worker.mlpExpected`. With
 * `repository` (another worker's `.repository`), nothing is built. `args` are extra worker flags.
 */
async function startWorker({ mlpInput = [[0.1, 0.2, 0.3, 0.4]], repository = null, args = [], env = {} } = {}) {
  let tmp = null;
  let repo = repository;
  let expected = null;
  if (!repo) {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lmaas-node-'));
    repo = path.join(tmp, 'repo');
    expected = JSON.parse(await runPython(['-c', BUILD_REPOSITORY, repo, JSON.stringify(mlpInput)]));
  }
  const worker = await startServer(
    ['-m', 'lmaas.cli', 'worker', '--model-repository', repo, '--grpc-port', '0', '--metrics-port', '0', '--http-port', '0',
      '--host', '127.0.0.1', ...args],
    { tmp, env },
  );
  worker.repository = repo;
  worker.mlpExpected = expected;
  return worker;
}

// The control plane on an SQLite store, through its Python API (the same wiring as `lmaas control-plane`).
const RUN_CONTROL_PLANE = `
import asyncio, signal, sys
from pathlib import Path
from lmaas.control_plane.app import ControlPlane
from lmaas.control_plane.settings import ControlPlaneSettings

async def main() -> None:
    tmp = Path(sys.argv[1])
    settings = ControlPlaneSettings(store=f"sqlite:///{tmp / 'control.db'}", artifact_dir=tmp / "artifacts",
                                    host="127.0.0.1", grpc_port=0, metrics_port=0, grace_seconds=0.5,
                                    bootstrap_token=sys.argv[2], bootstrap_token_file=None)
    cp = ControlPlane(settings)
    grpc_port, metrics_port = await cp.start()
    print(f"lmaas control-plane listening grpc=127.0.0.1:{grpc_port} metrics=127.0.0.1:{metrics_port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await cp.stop(0.5)

asyncio.run(main())
`;

/** Start a control plane on a fresh SQLite store; `.token` is its admin token (auth is on). */
async function startControlPlane() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lmaas-node-cp-'));
  const token = `lmaas_${crypto.randomBytes(6).toString('hex')}_${crypto.randomBytes(32).toString('base64url')}`;
  const server = await startServer(['-c', RUN_CONTROL_PLANE, tmp, token], { tmp });
  return Object.assign(server, { token });
}

module.exports = { PYTHON, REPO_ROOT, startControlPlane, startWorker };
