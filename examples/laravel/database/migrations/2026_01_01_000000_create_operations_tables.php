<?php

use Illuminate\Database\Migrations\Migration;
use Illuminate\Support\Facades\DB;

// Stand-in for the tables a real host app already has (users, workspaces, memberships,
// tenants, operation_runs, review_packs), so the example runs on an empty database.
return new class extends Migration
{
    public function up()
    {
        DB::unprepared(file_get_contents(config('services.host.migrations').'/20260101000000_host_tables.sql'));
    }
};
