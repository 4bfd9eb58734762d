// meshtrace_cache_hints.h is header-only: its functions are inlined where they are called.
#include "meshtrace_cache_hints.h"
