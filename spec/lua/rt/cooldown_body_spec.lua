-- rt.pool's cooldown answer in each client's envelope: the fact sheet's
-- body for OpenAI clients, Anthropic's and Google's shapes (with the same
-- facts) for the others. Compared as bytes: the order is part of the shape.
local pool = require("rt.pool")

describe("rt.pool.cooldown_body", function()
  local res = pool.cooldown_outcome("m1", { { provider = "claude", entry = { name = "acme" } } }, 61.2)

  it("is 429 with Retry-After", function()
    assert.equal(429, res.status)
    assert.equal("62", res.extra["Retry-After"])
  end)

  local cases = {
    { "openai_chat", '{"error":{"code":"model_cooldown","message":"All credentials for model m1 are cooling down via '
      .. 'provider acme","model":"m1","provider":"acme","reset_seconds":62,"reset_time":"1m2s"}}' },
    { "openai_responses", nil },
    { "claude", '{"type":"error","error":{"type":"rate_limit_error","message":"All credentials for model m1 are '
      .. 'cooling down via provider acme","code":"model_cooldown","model":"m1","provider":"acme",'
      .. '"reset_time":"1m2s","reset_seconds":62}}' },
    { "gemini", '{"error":{"code":429,"message":"All credentials for model m1 are cooling down via provider acme",'
      .. '"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo",'
      .. '"retryDelay":"62s"}]}}' },
  }
  for _, c in ipairs(cases) do
    it("for " .. c[1], function()
      assert.equal(c[2] or cases[1][2], pool.cooldown_body(c[1], res))
    end)
  end
end)
