<?php

use Illuminate\Database\Migrations\Migration;
use Illuminate\Support\Facades\DB;
use Runwire\Laravel\Integration;

// runwire's integration point, applied with the app's own migrations (what
// `runwire migrate` applies): a publication for logical replication, or the NOTIFY triggers,
// by `runwire.changes` (auto: logical replication where the server has wal_level = logical).
// It creates none of the app's tables and is safe to run again.
return new class extends Migration
{
    public function up()
    {
        Integration::install(DB::connection(), config('runwire.changes', 'auto'));
    }
};
