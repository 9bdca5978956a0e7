// Enqueue agent-supervisor jobs from JavaScript with supabase-js: a web page, a Node script or
// a Supabase Edge Function calls the `jobs_enqueue` RPC of bridge/sql/functions.sql, and every
// idle supervisor of the project wakes up at once (Realtime broadcast from the insert trigger).
//
//   import { createClient } from '@supabase/supabase-js'
//   import { enqueueJobs } from './enqueue.mjs'
//   const supabase = createClient(SUPABASE_URL, KEY)   // see "Which key" below
//   const ids = await enqueueJobs(supabase, [{ kind: 'summarize', payload: { doc: 42 } }])
//
// Which key: the secret (service-role) key on a server or in an Edge Function; in a browser,
// only in per-user mode (bridge/sql/per_user.sql), where the publishable key plus the signed-in
// user's session enqueue jobs that only that user's supervisors see. Never ship the secret key
// to a browser.
//
// A spec is what `agent-supervisor submit` takes: kind (a kind registered in the supervisors'
// config), payload (JSON), priority, concurrency_key, dedup_key, max_attempts, timeout_s, ...

const PAGE = 500 // specs per call: PostgREST's row cap and the statement timeout (bridge/sql/README.md)

/**
 * Enqueue `specs`; resolves to their job ids, in order. Each call of at most 500 specs is one
 * transaction with its own request id, so retrying a call whose answer was lost (pass the same
 * `requestId` for a one-call batch) returns the same ids instead of inserting twice.
 */
export async function enqueueJobs(supabase, specs, { requestId } = {}) {
  if (!Array.isArray(specs)) throw new TypeError('specs must be an array of job specs')
  const ids = []
  for (let start = 0; start < specs.length; start += PAGE) {
    const chunk = specs.slice(start, start + PAGE)
    const { data, error } = await supabase.rpc('jobs_enqueue', {
      p_specs: chunk,
      p_request_id: (specs.length <= PAGE && requestId) || crypto.randomUUID(),
      p_first_line: start + 1,
    })
    if (error) {
      const queued = ids.length ? ` (lines 1-${ids.length} were queued)` : ''
      throw new Error(`jobs_enqueue refused: ${error.code}: ${error.message}${queued}`)
    }
    const got = data?.[0]?.job_ids
    if (!Array.isArray(got) || got.length !== chunk.length) {
      throw new Error(`jobs_enqueue answered ${got?.length ?? '?'} ids for ${chunk.length} specs`)
    }
    ids.push(...got)
  }
  return ids
}

/**
 * The body of an Edge Function (Deno.serve(req => handleEnqueue(req, supabase))): POST
 * {"specs": [...]} → 200 {"ids": [...]}, or 400 {"error": "..."}.
 */
export async function handleEnqueue(req, supabase) {
  const json = (status, body) =>
    new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } })
  if (req.method !== 'POST') return json(405, { error: 'POST {"specs": [...]}' })
  let body
  try {
    body = await req.json()
  } catch {
    return json(400, { error: 'the body is not JSON' })
  }
  try {
    return json(200, { ids: await enqueueJobs(supabase, body.specs) })
  } catch (err) {
    return json(400, { error: String(err.message ?? err) })
  }
}
