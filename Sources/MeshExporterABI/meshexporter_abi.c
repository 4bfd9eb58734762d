// The declarations of meshexporter.h, for the Swift code that implements them.
#include "meshexporter.h"
