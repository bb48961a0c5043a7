<?php

return [
    'runwire' => [
        // Where browsers reach runwire: the same site behind the proxy ('/runwire'), or its
        // own origin listed in runwire's --allowed-origins.
        'url' => env('RUNWIRE_URL', '/runwire'),
        // Shared with runwire (RUNWIRE_JWT_SECRET), at least 32 bytes.
        'secret' => env('RUNWIRE_JWT_SECRET'),
        // Token lifetime in seconds: short; runwire.js asks /auth/runwire-token for the next.
        'ttl' => (int) env('RUNWIRE_TOKEN_TTL', 300),
        // Where runwire's SQL files are (this example reads them from the runwire checkout).
        'migrations' => env('RUNWIRE_MIGRATIONS', base_path('../../migrations')),
    ],
];
