/* cpx_otlp.h: OpenTelemetry spans over OTLP/HTTP JSON, sent by one thread
 * (see cpx_otlp.c); cpx.otlp in Lua. */
#ifndef CPX_OTLP_H
#define CPX_OTLP_H

struct lua_State;
void cpx_otlp_lua_register(struct lua_State *L);
/* Sends what is queued and stops the sender thread (at exit). */
void cpx_otlp_close(void);

#endif /* CPX_OTLP_H */
