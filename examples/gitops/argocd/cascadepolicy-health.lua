-- Argo CD health check for tierguard.io/CascadePolicy (resource.customizations.health.tierguard.io_CascadePolicy).
-- It reads the same fields kstatus reads, so Argo CD, Flux and `kubectl wait` agree:
--   the operator has not observed the latest spec (status.observedGeneration < metadata.generation) -> Progressing
--   Stalled=True   (a rollback, an abort, an invalid spec)                                        -> Degraded
--   phase Paused   (a step waiting for `tierguard promote`)                                       -> Suspended
--   Reconciling=True (a rollout moving through its steps)                                         -> Progressing
--   Ready=True     (the spec's revision is stable)                                                -> Healthy
hs = { status = "Progressing", message = "waiting for the tierguard operator" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.message = "the operator has not observed generation " .. tostring(generation) .. " yet"
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions or {}) do
  conditions[c.type] = c
end
local function holds(kind)
  return conditions[kind] ~= nil and conditions[kind].status == "True"
end
local function say(status, kind)
  hs.status = status
  hs.message = conditions[kind] and (conditions[kind].reason .. ": " .. (conditions[kind].message or "")) or ""
  return hs
end
if holds("Stalled") then
  return say("Degraded", "Stalled")
end
if obj.status.phase == "Paused" then
  return say("Suspended", "Reconciling")
end
if holds("Reconciling") then
  return say("Progressing", "Reconciling")
end
if holds("Ready") then
  return say("Healthy", "Ready")
end
hs.message = "phase " .. tostring(obj.status.phase)
return hs
