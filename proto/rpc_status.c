/* rpc_status.c - names of gRPC status codes (for logs and errors). */
#include "lib/common.h"
#include "proto/rpc.h"

const char *rpc_status_name(enum rpc_status st)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
		"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	};
	if ((unsigned)st < N_ELEMENTS(names))
		return names[st];
	return "UNKNOWN";
}
