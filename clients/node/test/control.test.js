'use strict';
// listModels against a real control plane (ModelRegistry, lmaas.control.v1) on an SQLite store.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { ControlPlaneClient } = require('../lmaas');
const { startControlPlane } = require('../test-support/servers');

let controlPlane;
let client;

before(async () => {
  controlPlane = await startControlPlane();
  client = new ControlPlaneClient(controlPlane.grpc, { token: controlPlane.token });
}, { timeout: 120000 });

after(async () => {
  if (client) client.close();
  if (controlPlane) await controlPlane.stop();
});

test('a call without a token is UNAUTHENTICATED', async () => {
  const anonymous = new ControlPlaneClient(controlPlane.grpc, { token: undefined });
  try {
    await assert.rejects(anonymous.listModels(), (err) => err.status === 'UNAUTHENTICATED');
  } finally {
    anonymous.close();
  }
});

function createModel(name, description) {
  return client.call('CreateModel', { name, description }); // the shared call path sends the token
}

test('lists the models of the control plane', async () => {
  assert.deepEqual(await client.listModels(), []);
  await createModel('zeta', 'last');
  await createModel('alpha', 'first');
  const models = await client.listModels();
  assert.deepEqual(models.map((m) => m.name), ['alpha', 'zeta']);
  assert.equal(models[0].description, 'first');
  assert.equal(models[0].latest_version, '0'); // int64 as a string (longs: String)
  assert.deepEqual(await client.listVersions('alpha'), []);
  await assert.rejects(client.listVersions('nope'), (err) => err.status === 'NOT_FOUND');
});
