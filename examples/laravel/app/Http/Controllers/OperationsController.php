<?php

namespace App\Http\Controllers;

use Illuminate\Http\Request;
use Illuminate\Support\Facades\DB;

/** The two pages that used to poll: a run's viewer and a tenant with its review-pack card. */
class OperationsController
{
    public function run(Request $request, int $run)
    {
        $run = DB::table('operation_runs')->find($run);
        abort_unless($run && $this->member($request, $run->workspace_id), 404);

        return view('runs.show', ['run' => $run, 'counts' => json_decode($run->summary_counts, true) ?: []]);
    }

    public function tenant(Request $request, int $tenant)
    {
        $tenant = DB::table('tenants')->find($tenant);
        abort_unless($tenant && $this->member($request, $tenant->workspace_id), 404);
        $pack = DB::table('review_packs')->where('tenant_id', $tenant->id)
            ->orderByDesc('created_at')->orderByDesc('id')->first();

        return view('tenants.show', ['tenant' => $tenant, 'pack' => $pack]);
    }

    /** The "Generate review pack" action: the app writes the row; runwire streams the rest. */
    public function generatePack(Request $request, int $tenant)
    {
        $tenant = DB::table('tenants')->find($tenant);
        abort_unless($tenant && $this->member($request, $tenant->workspace_id), 404);
        $id = DB::table('review_packs')->insertGetId([
            'workspace_id' => $tenant->workspace_id,
            'tenant_id' => $tenant->id,
            'status' => 'queued',
        ]);

        return response()->json(['id' => $id], 201);
    }

    private function member(Request $request, int $workspace): bool
    {
        return DB::table('workspace_memberships')
            ->where(['workspace_id' => $workspace, 'user_id' => $request->user()->id])
            ->exists();
    }
}
