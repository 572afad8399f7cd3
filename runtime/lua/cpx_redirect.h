/* cpx_redirect.h: temporary redirect listeners (`cpx.redirect`), the
 * forwarders an OAuth starter opens on a provider's fixed callback port
 * (`?is_webui=true`) so that a browser sent to http://localhost:<port>/...
 * lands on the main port's /<provider>/callback. See cpx_redirect_lua.c.
 */
#ifndef CPX_REDIRECT_H
#define CPX_REDIRECT_H

#include <lua.h>
#include <uv.h>

/* Closes every forwarder living on loop now (the worker drains and leaves
 * its loop). Their handles are closed; the memory is freed by the close
 * callbacks, which the loop runs in its next two iterations. Loop thread
 * only. */
void cpx_redirect_close_loop(uv_loop_t *loop);

#endif /* CPX_REDIRECT_H */
