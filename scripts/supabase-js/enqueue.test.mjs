// Run by tests/integration/test_supabase_js.py against the Supabase stand-in: the real
// supabase-js from npm, over HTTP, calling the jobs_enqueue RPC. Prints the ids it got.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createClient } from '@supabase/supabase-js'
import { enqueueJobs, handleEnqueue } from './enqueue.mjs'

const url = process.env.SUPABASE_URL
const options = { auth: { persistSession: false, autoRefreshToken: false } }

test('the service key enqueues jobs and gets their ids in order', async () => {
  const supabase = createClient(url, process.env.SUPABASE_SECRET_KEY, options)
  const specs = [
    { kind: 'summarize', payload: { doc: 42 }, priority: 5 },
    { kind: 'summarize', payload: { doc: 43 }, dedup_key: 'doc-43' },
    { kind: 'summarize', payload: { doc: 43 }, dedup_key: 'doc-43' },
  ]
  const ids = await enqueueJobs(supabase, specs)
  assert.equal(ids.length, 3)
  assert.equal(ids[1], ids[2]) // the same dedup key: one job
  console.log(`IDS ${JSON.stringify(ids)}`)
  const again = await enqueueJobs(supabase, specs.slice(0, 1), { requestId: '6f1c1f4e-5b0e-4d5a-9d55-6d1b7a0d0001' })
  const replay = await enqueueJobs(supabase, specs.slice(0, 1), { requestId: '6f1c1f4e-5b0e-4d5a-9d55-6d1b7a0d0001' })
  assert.deepEqual(replay, again) // a retried request inserts nothing more
  console.log(`REPLAYED ${JSON.stringify(replay)}`)
})

test('600 specs go in two calls and come back in order', async () => {
  const supabase = createClient(url, process.env.SUPABASE_SECRET_KEY, options)
  const ids = await enqueueJobs(supabase, Array.from({ length: 600 }, (_, n) => ({ kind: 'bulk', payload: { n } })))
  assert.equal(ids.length, 600)
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b))
})

test('an Edge Function handler answers ids or a clear error', async () => {
  const supabase = createClient(url, process.env.SUPABASE_SECRET_KEY, options)
  const ok = await handleEnqueue(new Request('http://edge/enqueue', { method: 'POST', body: JSON.stringify({ specs: [{ kind: 'edge' }] }) }), supabase)
  assert.equal(ok.status, 200)
  assert.equal((await ok.json()).ids.length, 1)
  const bad = await handleEnqueue(new Request('http://edge/enqueue', { method: 'POST', body: JSON.stringify({ specs: [{ kind: 'bad', max_attempts: 0 }] }) }), supabase)
  assert.equal(bad.status, 400)
  assert.match((await bad.json()).error, /line 1 of the batch.*max_attempts/)
})

test('the publishable key alone is refused', async () => {
  const supabase = createClient(url, process.env.SUPABASE_PUBLISHABLE_KEY, options)
  await assert.rejects(enqueueJobs(supabase, [{ kind: 'x' }]), /42501/)
})
