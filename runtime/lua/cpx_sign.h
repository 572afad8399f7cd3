/* cpx_sign.h: cpx.rsa_sha256_sign (cpx_sign_lua.c). */
#ifndef CPX_SIGN_H
#define CPX_SIGN_H

#include <lua.h>

/* Adds cpx.rsa_sha256_sign to the cpx table at the top of L. */
void cpx_sign_lua_register(lua_State *L);

#endif /* CPX_SIGN_H */
