/* cpx_redirect.h: temporary redirect listeners (`cpx.redirect`), the
 * forwarders an OAuth starter opens on a provider's fixed callback port
 * (`?is_webui=true`) so that a browser sent to http://localhost:<port>/...
 * lands on the main port's /<provider>/callback. See cpx_redirect_lua.c.
 */
#ifndef CPX_REDIRECT_H
#define CPX_REDIRECT_H

#include <lua.h>
#include <uv.h>

/* Adds cpx.redirect to the cpx table at the top of L. */
void cpx_redirect_lua_register(lua_State *L);

/* Closes every forwarder living on loop now (the worker drains and leaves
 * its loop). Their handles are closed; the memory is freed by the close
 * callbacks, which the loop runs in its next two iterations. Loop thread
 * only. */
void cpx_redirect_close_loop(uv_loop_t *loop);

#endif /* CPX_REDIRECT_H */
