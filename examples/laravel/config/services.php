<?php

return [
    'host' => [
        // Where runwire's SQL for the stand-in host tables is (the runwire checkout).
        'migrations' => env('RUNWIRE_MIGRATIONS', base_path('../../migrations')),
    ],
];
