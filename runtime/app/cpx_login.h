/* `cliproxy login claude|codex [--device]`: runs rt.login's flow in a
 * coroutine on a loop of its own and gives it what needs the OS: the local
 * callback server (cpx_server, so llhttp parses the browser's request),
 * pasted lines from standard input, the browser, timers, the token
 * requests (cpx_upstream) and the credential write (cpx_store). */
#ifndef CPX_LOGIN_H
#define CPX_LOGIN_H

typedef struct {
  const char *provider;   /* a name of cpx_login_providers */
  int device;             /* a device code instead of the browser */
  int cookie;             /* iFlow: log in with a pasted browser cookie */
  const char *project_id; /* Gemini: a Code Assist project id, or "all" */
  int no_browser;         /* print the URL only */
  int port;               /* callback port; 0: the provider's */
  double timeout;         /* seconds; 0: the flow's default */
} cpx_login_opts_t;

/* The accounts `cliproxy login` knows, NULL-terminated. Which of them has
 * a flow is rt.login's business; this list only lets the command line name
 * them and is the order the help shows. */
extern const char *const cpx_login_providers[];

/* Loads config_path and lua_dir as the server would, runs the flow and
 * returns the process exit code (0 when a credential was saved). */
int cpx_login_run(const cpx_login_opts_t *opts, const char *config_path,
                  const char *lua_dir);

#endif
